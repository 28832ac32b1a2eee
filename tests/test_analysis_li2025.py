"""Fits on the public run tables of Li et al. 2025 (../shared/data/scaling_runs_li2025)."""

from pathlib import Path

import numpy as np
import pytest

from analysis import li2025
from analysis.bootstrap import bootstrap_fit
from analysis.fitting import fit_law
from analysis.laws import get_law

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scaling_runs_li2025"
pytestmark = pytest.mark.skipif(not (DATA_DIR / li2025.DENSE_FILE).exists(),
                                reason=f"Li et al. 2025 tables not found at {DATA_DIR}")


def test_loaders_select_best_learning_rate_per_cell():
  dense = li2025.load_dense(DATA_DIR)
  assert len(dense) == 81  # (model, D) cells of the 261 runs.
  assert not dense.duplicated(["model", "D"]).any()
  all_runs = li2025.load_dense(DATA_DIR, best_lr=False)
  assert len(all_runs) == 261
  best = all_runs.groupby(["model", "D"])["loss"].min().sort_index()
  np.testing.assert_allclose(dense.set_index(["model", "D"])["loss"].sort_index(), best)
  spm = li2025.load_moe("spm", DATA_DIR)
  assert len(spm) == 14 and set(spm["E"]) == {4.0, 16.0, 64.0, 256.0}
  assert set(spm["N"]) == {12e6, 25e6, 50e6, 100e6}
  gshard = li2025.load_moe("gshard", DATA_DIR)
  # Runs stopped mid-schedule are dropped; the finished 100k-step run stays.
  assert (gshard["steps"] == 250).sum() == 4 and len(gshard) == 5


def test_dense_chinchilla_fit_is_stable_and_reports_intervals():
  dense = li2025.load_dense(DATA_DIR)
  fit = fit_law(get_law("chinchilla"), {"N": dense["N"], "D": dense["D"]}, dense["loss"])
  stab = fit.stability()
  # Hundreds of the 4,500 starts reach the same optimum, and agree on where it is.
  assert stab["n_near_best"] >= 100
  for name in ("alpha", "beta", "E"):
    lo, hi = stab["near_best_range"][name]
    assert hi - lo < 0.1 * max(1.0, abs(fit.params()[name])), name
  boot = bootstrap_fit(fit, 100, seed=0)
  summary = boot.summary()
  for name, s in summary.items():
    lo, hi = s["ci"]
    assert np.isfinite(lo) and np.isfinite(hi) and lo <= s["estimate"] <= hi, name
  assert 0.4 < summary["beta"]["estimate"] < 0.9
  assert fit.summary()["residual_rms"] < 0.05


def test_moe_clark_fit_on_spm():
  spm = li2025.load_moe("spm", DATA_DIR)
  law = get_law("clark")
  fit = fit_law(law, {"N": spm["N"], "E": spm["E"]}, spm["loss"])
  assert fit.stability()["n_near_best"] == fit.stability()["n_starts"]  # Convex.
  p = fit.params()
  assert p["a"] < 0  # Loss falls with model size.
  boot = bootstrap_fit(fit, 200, seed=0)
  for s in boot.summary().values():
    assert s["ci"][0] <= s["estimate"] <= s["ci"][1]
  assert fit.summary()["residual_rms"] < 0.03  # No irreducible term: a few % misfit.


def test_moe_joint_law_without_data_term_on_spm():
  """spm trains every size at ~21 tokens per parameter, so D cannot be separated from N:
  the joint law of Ludziejewski et al. is fitted with its data term removed."""
  spm = li2025.load_moe("spm", DATA_DIR)
  fixed = {"log_b": -np.inf, "beta": 0.0, "omega": 0.0, "zeta": 0.0}
  fit = fit_law(get_law("ludziejewski"), {"N": spm["N"], "D": spm["D"], "E": spm["E"]},
                spm["loss"], fixed=fixed)
  assert fit.summary()["residual_rms"] < 0.01
  assert fit.stability()["n_near_best"] >= 3
  summary = bootstrap_fit(fit, 200, seed=0).summary()
  for name in ("c", "alpha", "delta", "gamma"):
    lo, hi = summary[name]["ci"]
    assert np.isfinite(lo) and np.isfinite(hi) and lo <= summary[name]["estimate"] <= hi
