"""Held-out extrapolation: fit on the small runs, predict the largest.

A scaling law is used to extrapolate, so the test that matters is whether a fit on the
smaller runs predicts the larger ones (Hoffmann et al. 2022 fit up to 16B and predict
Chinchilla; Li et al. 2025, "(Mis)Fitting", show how much such predictions move with fitting
choices). ``holdout_extrapolation`` holds out the rows with the largest values of one input,
fits on the rest, and reports the prediction error and whether each observation falls in the
bootstrap prediction interval. Two intervals are reported per held-out run: ``ci`` from the
bootstrap replicates of the parameters alone (where the law's mean is), and
``prediction_ci`` which also adds a residual of the training fit drawn at random to each
replicate (where one new run should fall: the usual bootstrap prediction interval).
Coverage is counted with ``prediction_ci``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from analysis.bootstrap import bootstrap_fit
from analysis.fitting import fit_law
from analysis.laws.base import ScalingLaw


def holdout_extrapolation(law: ScalingLaw, inputs: Mapping[str, Sequence[float]],
                          loss: Sequence[float], *, split_input: str = "N",
                          num_holdout_values: int = 1, num_resamples: int = 200,
                          seed: int = 0, level: float = 0.95, **fit_kwargs) -> dict:
  """Fits on all but the largest ``num_holdout_values`` values of ``split_input``.

  Args:
    law: the law to fit.
    inputs: arrays [R] per law input.
    loss: observed losses [R].
    split_input: the input whose largest values are held out (e.g. "N", or "D").
    num_holdout_values: how many distinct largest values to hold out.
    num_resamples: bootstrap resamples of the training fit (0: no intervals).
    seed: bootstrap seed.
    level: prediction-interval level.
    **fit_kwargs: passed to ``fit_law`` (delta, fixed, init_grid).

  Returns:
    {"split_input", "threshold", "num_train", "num_test", "train_params", "rows": [per held
    out row: inputs, observed, predicted, rel_error, ci, prediction_ci, covered],
    "mean_abs_rel_error",
    "max_abs_rel_error", "log_rmse", "coverage", "train_residual_rms"}.
  """
  arrays = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()}
  loss_R = np.asarray(loss, dtype=np.float64)
  values = np.unique(arrays[split_input])
  if len(values) <= num_holdout_values:
    raise ValueError(f"{split_input!r} has {len(values)} distinct values; cannot hold out "
                     f"{num_holdout_values} and still fit")
  threshold = values[-num_holdout_values]
  test = arrays[split_input] >= threshold
  train = ~test
  fit = fit_law(law, {k: v[train] for k, v in arrays.items()}, loss_R[train], **fit_kwargs)
  test_inputs = {k: v[test] for k, v in arrays.items()}
  predicted = fit.predict(test_inputs)
  observed = loss_R[test]
  rel_err = predicted / observed - 1.0
  nan_T = np.full(len(observed), np.nan)
  lo_T, hi_T, plo_T, phi_T = nan_T, nan_T, nan_T, nan_T
  if num_resamples > 0:
    boot = bootstrap_fit(fit, num_resamples, seed=seed)
    log_pred_BT, _ = law.log_predict(boot.theta_BP, law.features(test_inputs))
    rng = np.random.default_rng(seed)
    noise_BT = fit.residuals[rng.integers(0, fit.num_rows, size=log_pred_BT.shape)]
    tail = 100.0 * (1.0 - level) / 2.0
    lo_T, hi_T = np.exp(np.nanpercentile(log_pred_BT, [tail, 100.0 - tail], axis=0))
    # log Lhat - log L = residual, so a new observation is log Lhat - residual.
    plo_T, phi_T = np.exp(np.nanpercentile(log_pred_BT - noise_BT, [tail, 100.0 - tail],
                                           axis=0))
  covered = (observed >= plo_T) & (observed <= phi_T)
  rows = [{**{k: float(v[t]) for k, v in test_inputs.items()},
           "observed": float(observed[t]), "predicted": float(predicted[t]),
           "rel_error": float(rel_err[t]), "ci": [float(lo_T[t]), float(hi_T[t])],
           "prediction_ci": [float(plo_T[t]), float(phi_T[t])],
           "covered": bool(covered[t])} for t in range(len(observed))]
  return {
      "split_input": split_input, "threshold": float(threshold),
      "num_train": int(train.sum()), "num_test": int(test.sum()),
      "train_params": fit.params(),
      "rows": rows,
      "mean_abs_rel_error": float(np.mean(np.abs(rel_err))),
      "max_abs_rel_error": float(np.max(np.abs(rel_err))),
      "log_rmse": float(np.sqrt(np.mean(np.log(predicted / observed) ** 2))),
      "coverage": float(np.mean(covered)) if num_resamples > 0 else float("nan"),
      "train_residual_rms": fit.summary()["residual_rms"],
  }
