"""Figures of the DiT-MoE study (moejax/study/dit.py).

  fd_by_model        feature-classifier Frechet distance per model (seed mean, t interval
                     over seeds), the real-vs-real floor as a line;
  routing_<attr>     expert usage by timestep bin, class and patch position, one heatmap per
                     MoE layer (first choices; rows sum to 1);
  routing_nmi        NMI(expert; attribute) per layer beside its permutation null;
  samples            a grid of samples, one row per class.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import pandas as pd  # noqa: E402  pylint: disable=wrong-import-position

from analysis.figures import save_figure  # noqa: E402  pylint: disable=wrong-import-position

ATTRIBUTES = ("timestep", "class", "position")


def plot_fd(models: pd.DataFrame, floor: float):
  fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
  y = np.arange(len(models))
  err = np.stack([models["fd_cnn"] - models["fd_cnn_lo"], models["fd_cnn_hi"] - models["fd_cnn"]])
  ax.errorbar(models["fd_cnn"], y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
  ax.axvline(floor, color="gray", ls="--", label=f"real vs real floor {floor:.2f}")
  ax.set(yticks=y, yticklabels=models["name"], xlabel="FD-CNN (lower is better)",
         title="DiT-MoE sample quality (FD-CNN, not Inception FID)")
  ax.tick_params(axis="y", labelsize=7)
  ax.legend(fontsize=8)
  return fig


def plot_usage(usage_MVE, attribute: str):
  layers = usage_MVE.shape[0]
  fig, axes = plt.subplots(1, layers, figsize=(2.6 * layers, 3), layout="constrained",
                           squeeze=False)
  for m, ax in enumerate(axes[0]):
    image = ax.imshow(usage_MVE[m], aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax.set(title=f"MoE layer {m}", xlabel="expert", ylabel=attribute if m == 0 else None)
  fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of first choices")
  return fig


def plot_nmi(routing: dict):
  fig, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(10, 3), layout="constrained")
  for ax, name in zip(axes, ATTRIBUTES):
    layers = np.arange(len(routing[name]["nmi"]))
    ax.bar(layers - 0.2, routing[name]["nmi"], 0.4, label="NMI")
    ax.bar(layers + 0.2, routing[name]["null_p95"], 0.4, label="null 95th pct")
    ax.set(title=f"expert ; {name}", xlabel="MoE layer", xticks=layers)
  axes[0].legend(fontsize=8)
  return fig


def plot_samples(samples_CNHWC, class_names):
  classes, per_class = samples_CNHWC.shape[:2]
  fig, axes = plt.subplots(classes, per_class, figsize=(per_class * 0.8, classes * 0.8),
                           squeeze=False)
  for c in range(classes):
    for i in range(per_class):
      ax = axes[c, i]
      ax.imshow(np.clip((samples_CNHWC[c, i, ..., 0] + 1) / 2, 0, 1), cmap="gray", vmin=0,
                vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(class_names[c], fontsize=6, rotation=0, ha="right")
  return fig


def make_figures(out_dir: str, *, models: pd.DataFrame, floor: float | None, routing: dict | None,
                 samples=None, class_names=()) -> list[str]:
  """Writes every figure it has data for (png and pdf); returns their names."""
  Path(out_dir).mkdir(parents=True, exist_ok=True)
  figures = {}
  if len(models) and floor is not None:
    figures["fd_by_model"] = plot_fd(models, floor)
  if routing is not None:
    figures.update({f"routing_{name}": plot_usage(np.asarray(routing[name]["usage"]), name)
                    for name in ATTRIBUTES})
    figures["routing_nmi"] = plot_nmi(routing)
  if samples is not None:
    figures["samples"] = plot_samples(samples, class_names)
  for name, fig in figures.items():
    save_figure(fig, Path(out_dir) / name)
    plt.close(fig)
  return list(figures)
