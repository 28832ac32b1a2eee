"""Fitting and bootstrap: recovery of known coefficients with honest, narrow intervals."""

import itertools

import numpy as np
import pytest

from analysis.bootstrap import bootstrap_fit, resample_counts
from analysis.fitting import fit_law
from analysis.laws import get_law
from analysis.synthetic import CHINCHILLA_TRUTH, synthetic_chinchilla_runs

CHINCHILLA = get_law("chinchilla")


@pytest.fixture(scope="module")
def recovery():
  """Hoffmann et al.'s law, 7 sizes x 5 TPP, 1% noise; full 4,500-start grid; 500 resamples."""
  data = synthetic_chinchilla_runs(seed=0)
  fit = fit_law(CHINCHILLA, {"N": data["N"], "D": data["D"]}, data["loss"])
  boot = bootstrap_fit(fit, 500, seed=0)
  return data, fit, boot


def test_recovery_truth_inside_narrow_intervals(recovery):
  _, fit, boot = recovery
  summary = boot.summary()
  for name, truth in CHINCHILLA_TRUTH.items():
    lo, hi = summary[name]["ci"]
    assert lo <= truth <= hi, (name, truth, summary[name])
  # Narrow enough to mean something (a fitter that reports [0, inf] would pass the above).
  width = {k: summary[k]["ci"][1] - summary[k]["ci"][0] for k in summary}
  assert width["E"] < 0.5
  assert width["alpha"] < 0.3
  assert width["beta"] < 0.15
  assert width["n_opt_exponent"] < 0.3
  assert summary["A"]["ci"][1] / summary["A"]["ci"][0] < 100  # within two decades
  assert summary["B"]["ci"][1] / summary["B"]["ci"][0] < 100
  assert boot.n_unconverged == 0
  for name, values in summary.items():
    assert values["se"] > 0, name


def test_fit_reports_objective_residuals_and_stability(recovery):
  data, fit, _ = recovery
  s = fit.summary()
  assert s["n_rows"] == len(data["loss"])
  assert s["objective"] == pytest.approx(fit.objective)
  np.testing.assert_allclose(fit.residuals,
                             np.log(fit.predict({"N": data["N"], "D": data["D"]}) / data["loss"]))
  assert 0.003 < s["residual_rms"] < 0.03  # The noise is 1%.
  stab = fit.stability()
  assert stab["n_starts"] == 4500
  assert stab["n_near_best"] >= 100  # Many starts agree on the optimum ...
  lo, hi = stab["near_best_range"]["alpha"]
  assert hi - lo < 0.01  # ... and on where it is.
  # The reported optimum is at least as good as every start.
  assert fit.objective <= np.min(fit.starts_objective) + 1e-12


@pytest.mark.slow
def test_bootstrap_from_best_starts_matches_full_grid_refits(recovery):
  """The bootstrap's shortcut (refit from the full fit's best basins) loses nothing: a
  resample refitted from the whole 4,500-start grid reaches no better objective."""
  data, fit, boot = recovery
  counts = resample_counts(fit.num_rows, 500, seed=0)
  for b in (7,):
    rows = np.repeat(np.arange(fit.num_rows), counts[b].astype(int))  # The resampled runs.
    refit = fit_law(CHINCHILLA, {"N": data["N"][rows], "D": data["D"][rows]},
                    data["loss"][rows], polish=False)
    assert boot.objective_B[b] <= refit.objective * (1 + 1e-6)
    np.testing.assert_allclose(boot.replicates()["alpha"][b], refit.params()["alpha"],
                               atol=0.02)


def test_bootstrap_is_deterministic_given_seed(recovery):
  _, fit, boot = recovery
  again = bootstrap_fit(fit, 20, seed=0)
  np.testing.assert_allclose(again.theta_BP, boot.theta_BP[:20], rtol=1e-6, atol=1e-8)


def test_fixed_parameter_is_kept_and_others_recovered():
  data = synthetic_chinchilla_runs(seed=1, noise=0.003)
  fit = fit_law(CHINCHILLA, {"N": data["N"], "D": data["D"]}, data["loss"],
                fixed={"e": np.log(1.69)})
  params = fit.params()
  assert params["E"] == pytest.approx(1.69)
  assert params["alpha"] == pytest.approx(0.34, abs=0.03)
  assert params["beta"] == pytest.approx(0.28, abs=0.03)
  boot = bootstrap_fit(fit, 30, seed=0)
  np.testing.assert_allclose(boot.replicates()["E"], 1.69)


def test_duplicate_inputs_give_the_same_optimum():
  data = synthetic_chinchilla_runs(seed=2, noise=0.005)
  inputs = {"N": data["N"], "D": data["D"]}
  grid = CHINCHILLA.grid()[::9]
  once = fit_law(CHINCHILLA, inputs, data["loss"], init_grid=grid)
  twice = fit_law(CHINCHILLA, {k: np.tile(v, 2) for k, v in inputs.items()},
                  np.tile(data["loss"], 2), init_grid=grid)
  assert twice.problem.has_duplicates
  assert twice.objective == pytest.approx(2 * once.objective, rel=1e-6)
  np.testing.assert_allclose(twice.theta, once.theta, rtol=1e-4, atol=1e-4)


def test_invalid_losses_and_inputs_raise():
  with pytest.raises(ValueError):
    fit_law(CHINCHILLA, {"N": [1e8], "D": [1e9]}, [-1.0])
  with pytest.raises(KeyError):
    fit_law(CHINCHILLA, {"N": [1e8]}, [3.0])
  with pytest.raises(KeyError):
    fit_law(CHINCHILLA, {"N": [1e8], "D": [1e9]}, [3.0], fixed={"gamma": 1.0})


def _grid(**axes):
  return axes, np.array(list(itertools.product(*axes.values())))


def _fit_small(name, inputs, loss, grid_axes, **kwargs):
  law = get_law(name)
  axes = {p: grid_axes.get(p, (0.0,)) for p in law.param_names}
  grid = np.array(list(itertools.product(*axes.values())))
  return fit_law(law, inputs, loss, init_grid=grid, **kwargs)


def _mesh(*arrays):
  return [m.ravel() for m in np.meshgrid(*arrays)]


def test_moe_laws_recover_their_coefficients():
  rng = np.random.default_rng(3)
  noise = lambda n: np.exp(0.002 * rng.standard_normal(n))

  # Clark et al. 2022 (convex: any start recovers the coefficients).
  n, e = _mesh(np.logspace(7, 9, 6), np.array([1.0, 4.0, 16.0, 64.0, 256.0]))
  a, b, c, d = -0.082, -0.108, 0.009, 1.104
  loss = 10 ** (a * np.log10(n) + b * np.log10(e) + c * np.log10(n) * np.log10(e) + d)
  fit = fit_law(get_law("clark"), {"N": n, "E": e}, loss * noise(len(n)))
  for k, v in dict(a=a, b=b, c=c, d=d).items():
    assert fit.params()[k] == pytest.approx(v, abs=0.01), k
  assert fit.stability()["n_near_best"] == fit.stability()["n_starts"]

  # The sparsity law (this project's, after Abnar et al. 2025).
  n, dd, s = _mesh(np.logspace(7, 9, 5), np.logspace(9, 11, 4), np.array([0, .5, .75, .9375]))
  loss = 1.69 + 406.4 * (1 - s) ** 0.2 / n ** 0.34 + 410.7 / dd ** 0.28
  fit = _fit_small("sparsity", {"N": n, "D": dd, "S": s}, loss * noise(len(n)),
                   {"e": (0.0, 1.0), "a": (5.0, 10.0), "b": (5.0, 10.0), "alpha": (0.25, 0.75),
                    "beta": (0.25, 0.75), "lam": (0.0, 0.5)})
  p = fit.params()
  assert p["lambda"] == pytest.approx(0.2, abs=0.02)
  assert p["alpha"] == pytest.approx(0.34, abs=0.03)
  assert p["E"] == pytest.approx(1.69, abs=0.1)

  # Ludziejewski et al. 2025, joint law with ln E interactions.
  n, dd, e = _mesh(np.logspace(7.5, 9, 5), np.logspace(9, 11, 4), np.array([1., 4., 16., 64.]))
  le = np.log(e)
  loss = (1.7 + 400 * e ** 0.1 * n ** (-0.34 + 0.02 * le)
          + 400 * e ** -0.05 * dd ** (-0.28 + 0.01 * le))
  fit = _fit_small("ludziejewski", {"N": n, "D": dd, "E": e}, loss * noise(len(n)),
                   {"log_c": (0.0, 1.0), "log_a": (5.0, 10.0), "log_b": (5.0, 10.0),
                    "alpha": (0.25, 0.75), "beta": (0.25, 0.75)})
  p = fit.params()
  assert p["gamma"] == pytest.approx(0.02, abs=0.01)
  assert p["zeta"] == pytest.approx(0.01, abs=0.01)
  assert p["alpha"] == pytest.approx(0.34, abs=0.05)

  # Krajewski et al. 2024, fine-grained law (coefficients as reported in the paper).
  n, dd, g = _mesh(np.logspace(7.5, 9, 4), np.logspace(9, 11, 4), np.array([1., 2., 4., 8., 16.]))
  loss = 0.47 + (2.1 / g ** 0.58 + 18.1) / n ** 0.115 + 30.8 / dd ** 0.147
  fit = _fit_small("krajewski", {"N": n, "D": dd, "G": g}, loss * noise(len(n)),
                   {"log_c": (-1.0, 0.0), "log_g": (0.0, 2.0), "log_a": (2.0, 4.0),
                    "log_b": (2.0, 4.0), "alpha": (0.1, 0.3), "beta": (0.1, 0.3),
                    "gamma": (0.25, 1.0)})
  p = fit.params()
  assert p["gamma"] == pytest.approx(0.58, abs=0.15)
  np.testing.assert_allclose(fit.predict({"N": n, "D": dd, "G": g}), loss, rtol=0.01)


def test_dropped_term_fit_on_n_and_e_only():
  """The joint law with its data term removed (D proportional to N, as in the spm table)."""
  rng = np.random.default_rng(4)
  n, e = _mesh(np.logspace(7, 8.3, 4), np.array([4.0, 16.0, 64.0, 256.0]))
  loss = 2.0 + 300 * e ** -0.05 * n ** (-0.3 + 0.01 * np.log(e))
  fixed = {"log_b": -np.inf, "beta": 0.0, "omega": 0.0, "zeta": 0.0}
  fit = _fit_small("ludziejewski", {"N": n, "D": n * 20, "E": e},
                   loss * np.exp(0.001 * rng.standard_normal(len(n))),
                   {"log_c": (0.0, 1.0), "log_a": (5.0, 10.0), "alpha": (0.25, 0.75)},
                   fixed=fixed)
  assert fit.params()["b"] == 0.0
  assert fit.params()["delta"] == pytest.approx(-0.05, abs=0.05)
  boot = bootstrap_fit(fit, 50, seed=0)
  assert np.all(boot.replicates()["b"] == 0.0)
  assert np.all(np.isfinite(boot.replicates()["alpha"]))
