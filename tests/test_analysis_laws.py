"""Scaling-law definitions: predictions match the papers' formulas, gradients are exact."""

import numpy as np
import pytest

from analysis.laws import LAW_NAMES, get_law
from analysis.laws.expert_count import transformed_expert_count
from analysis.problem import Problem

RNG = np.random.default_rng(0)
NUM_ROWS = 12
INPUTS = {
    "N": np.exp(RNG.uniform(np.log(1e7), np.log(1e9), NUM_ROWS)),
    "D": np.exp(RNG.uniform(np.log(1e9), np.log(1e11), NUM_ROWS)),
    "E": RNG.choice([1.0, 4.0, 16.0, 64.0], NUM_ROWS),
    "G": RNG.choice([1.0, 2.0, 8.0], NUM_ROWS),
    "S": RNG.choice([0.0, 0.5, 0.875], NUM_ROWS),
}
# Parameter values (optimised names) and the loss each law's paper formula gives.
THETA = {
    "chinchilla": {"e": np.log(1.69), "a": np.log(406.4), "b": np.log(410.7), "alpha": 0.34,
                   "beta": 0.28},
    "clark": {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104},
    "krajewski": {"log_c": np.log(0.47), "log_g": np.log(2.1), "log_a": np.log(18.1),
                  "log_b": np.log(30.8), "alpha": 0.115, "beta": 0.147, "gamma": 0.58},
    "ludziejewski": {"log_c": np.log(1.7), "log_a": np.log(400.0), "log_b": np.log(400.0),
                     "alpha": 0.34, "beta": 0.28, "delta": 0.1, "gamma": 0.02,
                     "omega": -0.05, "zeta": 0.01},
    "sparsity": {"e": np.log(1.69), "a": np.log(406.4), "b": np.log(410.7), "alpha": 0.34,
                 "beta": 0.28, "lam": 0.2},
}


def _paper_formula(name, p, x):
  n, d, e, g, s = x["N"], x["D"], x["E"], x["G"], x["S"]
  if name == "chinchilla":
    return np.exp(p["e"]) + np.exp(p["a"]) / n ** p["alpha"] + np.exp(p["b"]) / d ** p["beta"]
  if name == "clark":
    ln, le = np.log10(n), np.log10(e)
    return 10.0 ** (p["a"] * ln + p["b"] * le + p["c"] * ln * le + p["d"])
  if name == "krajewski":
    return (np.exp(p["log_c"]) + (np.exp(p["log_g"]) / g ** p["gamma"] + np.exp(p["log_a"]))
            / n ** p["alpha"] + np.exp(p["log_b"]) / d ** p["beta"])
  if name == "ludziejewski":
    le = np.log(e)
    return (np.exp(p["log_c"])
            + np.exp(p["log_a"]) * e ** p["delta"] * n ** (-p["alpha"] + p["gamma"] * le)
            + np.exp(p["log_b"]) * e ** p["omega"] * d ** (-p["beta"] + p["zeta"] * le))
  if name == "sparsity":
    return (np.exp(p["e"]) + np.exp(p["a"]) * (1 - s) ** p["lam"] / n ** p["alpha"]
            + np.exp(p["b"]) / d ** p["beta"])
  raise KeyError(name)


def _theta(law, name):
  return np.array([THETA[name][p] for p in law.param_names])


@pytest.mark.parametrize("name", LAW_NAMES)
def test_prediction_matches_paper_formula(name):
  law = get_law(name)
  feats = law.features({k: INPUTS[k] for k in law.input_names})
  log_pred, _ = law.log_predict(_theta(law, name)[None], feats)
  np.testing.assert_allclose(np.exp(log_pred[0]), _paper_formula(name, THETA[name], INPUTS),
                             rtol=1e-10)


@pytest.mark.parametrize("name", LAW_NAMES)
def test_vjp_matches_finite_differences(name):
  law = get_law(name)
  feats = law.features({k: INPUTS[k] for k in law.input_names})
  theta = _theta(law, name)
  cot = RNG.standard_normal((1, NUM_ROWS))
  _, vjp = law.log_predict(theta[None], feats)
  grad = vjp(cot)[0]
  eps = 1e-6
  for p in range(law.num_params):
    step = np.zeros_like(theta)
    step[p] = eps
    hi, _ = law.log_predict((theta + step)[None], feats)
    lo, _ = law.log_predict((theta - step)[None], feats)
    np.testing.assert_allclose(grad[p], np.sum(cot * (hi - lo)) / (2 * eps), rtol=1e-5,
                               atol=1e-8)


@pytest.mark.parametrize("name", LAW_NAMES)
def test_centred_coordinates_are_an_exact_change_of_variables(name):
  law = get_law(name)
  feats = law.features({k: INPUTS[k] for k in law.input_names})
  log_loss = np.log(_paper_formula(name, THETA[name], INPUTS)) + 0.01
  theta = _theta(law, name)
  problem = Problem.create(law, feats, log_loss, 1e-3, theta)
  x = problem.to_x(theta[None])
  np.testing.assert_allclose(problem.to_theta(x)[0], theta, rtol=1e-12, atol=1e-12)
  f, g = problem.objective()(x, np.zeros(1, dtype=int))
  assert np.isclose(f[0], NUM_ROWS * 1e-3 * (0.01 - 0.5e-3))  # Every |residual| = 0.01 > delta.
  eps = 1e-6
  for p in range(x.shape[1]):
    step = np.zeros_like(x)
    step[0, p] = eps
    fd = (problem.objective()(x + step, np.zeros(1, dtype=int))[0]
          - problem.objective()(x - step, np.zeros(1, dtype=int))[0]) / (2 * eps)
    np.testing.assert_allclose(g[0, p], fd[0], rtol=1e-4, atol=1e-9)


def test_dropped_term_is_exact_zero():
  law = get_law("ludziejewski")
  theta = _theta(law, "ludziejewski")
  theta[law.index("log_b")] = -np.inf
  feats = law.features({k: INPUTS[k] for k in law.input_names})
  log_pred, vjp = law.log_predict(theta[None], feats)
  p = dict(THETA["ludziejewski"], log_b=-np.inf)
  np.testing.assert_allclose(np.exp(log_pred[0]), _paper_formula("ludziejewski", p, INPUTS))
  assert np.all(np.isfinite(vjp(np.ones((1, NUM_ROWS)))))
  # The optimiser's coordinates keep the dropped term dropped, exactly.
  fixed = ("log_b", "beta", "omega", "zeta")
  problem = Problem.create(law, feats, log_pred[0], 1e-3, theta, fixed)
  back = problem.to_theta(problem.to_x(theta[None]))[0]
  assert back[law.index("log_b")] == -np.inf
  np.testing.assert_allclose(np.delete(back, law.index("log_b")),
                             np.delete(theta, law.index("log_b")), atol=1e-12)
  f, g = problem.objective()(problem.to_x(theta[None]), np.zeros(1, dtype=int))
  assert f[0] == pytest.approx(0.0, abs=1e-20) and np.all(np.isfinite(g))


def test_expert_count_transform():
  e = np.array([1.0, 2.0, 8.0, 64.0, 1e6])
  np.testing.assert_allclose(transformed_expert_count(e), e)
  e_hat = transformed_expert_count(e, e_start=2.0, e_max=300.0)
  assert e_hat[0] == pytest.approx(2.0)  # E_hat(1) = E_start (Clark et al. 2022).
  assert e_hat[-1] == pytest.approx(300.0, rel=1e-3)  # Saturates at E_max.
  assert np.all(np.diff(e_hat) > 0)
  with pytest.raises(ValueError):
    transformed_expert_count(np.array([0.5]))


def test_bad_inputs_and_names_raise():
  with pytest.raises(KeyError):
    get_law("kaplan")
  law = get_law("chinchilla")
  with pytest.raises(ValueError):
    law.features({"N": np.array([1e8, -1.0]), "D": np.array([1e9, 1e9])})
  with pytest.raises(ValueError):
    get_law("sparsity").features({"N": np.ones(1), "D": np.ones(1), "S": np.array([1.0])})
  with pytest.raises(KeyError):
    law.index("gamma")
