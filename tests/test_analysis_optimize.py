"""Batched L-BFGS: independent rows, agreement with scipy, per-row data."""

import numpy as np
import scipy.optimize

from analysis.optimize import minimize_batched


def _rosenbrock(x_SP, rows_S):
  del rows_S
  a, b = x_SP[:, 0], x_SP[:, 1]
  f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
  g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)
  return f, g


def test_rosenbrock_from_many_starts():
  starts = np.array([[-1.2, 1.0], [0.0, 0.0], [2.0, 2.0], [-0.5, 3.0]])
  res = minimize_batched(_rosenbrock, starts, max_iter=500)
  assert np.all(res.converged_S)
  np.testing.assert_allclose(res.x_SP, 1.0, atol=1e-4)
  for x0, x in zip(starts, res.x_SP):
    ref = scipy.optimize.minimize(lambda z: _rosenbrock(z[None], None)[0][0], x0,
                                  jac=lambda z: _rosenbrock(z[None], None)[1][0],
                                  method="L-BFGS-B")
    np.testing.assert_allclose(x, ref.x, atol=1e-3)


def test_rows_are_independent_and_see_their_own_data():
  # Row s minimises sum_p (x_p - c_sp)^2 + 0.1 x_p^4; its target c_s is selected by rows_S.
  targets = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [0.0, 0.0, 0.0]])

  def fun(x, rows):
    c = targets[rows]
    return (np.sum((x - c) ** 2 + 0.1 * x ** 4, axis=1), 2 * (x - c) + 0.4 * x ** 3)

  res = minimize_batched(fun, np.zeros((3, 3)))
  for s in range(3):
    only_s = lambda x, rows, s=s: fun(x, np.full(len(x), s))
    single = minimize_batched(only_s, np.zeros((1, 3)))
    np.testing.assert_allclose(res.x_SP[s], single.x_SP[0], atol=1e-8)
    np.testing.assert_allclose(res.grad_SP[s], 0.0, atol=1e-6)


def test_non_finite_regions_are_avoided():
  # f = x^2 - log(x): finite only for x > 0; a full step from x0 = 0.1 leaves the domain.
  def fun(x, rows):
    del rows
    with np.errstate(invalid="ignore", divide="ignore"):
      f = np.where(x[:, 0] > 0, x[:, 0] ** 2 - np.log(x[:, 0]), np.inf)
    return f, (2 * x - 1 / np.where(x > 0, x, 1.0))

  res = minimize_batched(fun, np.array([[0.1], [5.0]]))
  np.testing.assert_allclose(res.x_SP[:, 0], np.sqrt(0.5), atol=1e-6)
