"""Diagnostic figure of a fit: observed vs predicted loss, and residuals vs each input."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis.fitting import FitResult


def plot_fit_diagnostics(fit: FitResult, inputs: Mapping[str, Sequence[float]],
                         loss: Sequence[float]) -> Figure:
  """Left: observed vs predicted loss (the diagonal is a perfect fit). Right panels: the
  log-loss residuals against each input (log scale for counts), coloured by the second input.
  """
  names = list(fit.law.input_names)
  arrays = {n: np.asarray(inputs[n], dtype=np.float64) for n in names}
  observed = np.asarray(loss, dtype=np.float64)
  predicted = fit.predict(arrays)
  residual = np.log(predicted / observed)
  fig = Figure(figsize=(3.6 * (1 + len(names)), 3.4), layout="constrained")
  axes = fig.subplots(1, 1 + len(names))
  lo, hi = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
  axes[0].plot([lo, hi], [lo, hi], "k--", lw=1)
  axes[0].scatter(observed, predicted, s=12)
  axes[0].set_xlabel("observed loss")
  axes[0].set_ylabel("predicted loss")
  axes[0].set_title(f"{fit.law.name}: objective {fit.objective:.3g}", fontsize=9)
  colour_by = arrays[names[1]] if len(names) > 1 else arrays[names[0]]
  log_colour = bool(np.all(colour_by > 0))
  for ax, name in zip(axes[1:], names):
    x = arrays[name]
    sc = ax.scatter(x, residual, c=colour_by, s=12, cmap=colormaps["viridis"],
                    norm=LogNorm() if log_colour else None)
    ax.axhline(0.0, color="k", lw=1)
    if np.all(x > 0) and x.max() / x.min() > 10:
      ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel("log(predicted / observed)")
  fig.colorbar(sc, ax=axes[-1], label=names[1] if len(names) > 1 else names[0])
  return fig
