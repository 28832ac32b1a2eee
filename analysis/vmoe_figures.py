"""Figures of the ViT-MoE image sparsity study (moejax/study/vmoe.py).

  accuracy_vs_total_params   test accuracy (95% interval over images) against total parameters
                             per family of fixed active parameters, dense baseline included;
  capacity_curve             accuracy against the inference capacity factor, BPR vs not;
  class_specialization       NMI(expert; class) per MoE layer beside its permutation null, and
                             expert usage by class (heatmaps, one per MoE layer);
  task_pruning               accuracy kept against the fraction of expert weights a task
                             loads, per task and router.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import pandas as pd  # noqa: E402  pylint: disable=wrong-import-position

from analysis.figures import save_figure  # noqa: E402  pylint: disable=wrong-import-position


def plot_accuracy_vs_total_params(models: pd.DataFrame):
  fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
  for family, rows in models.groupby("family", sort=False):
    rows = rows.sort_values("total_params")
    err = np.stack([rows["test_accuracy"] - rows["test_accuracy_lo"],
                    rows["test_accuracy_hi"] - rows["test_accuracy"]])
    line = ax.errorbar(rows["total_params"], rows["test_accuracy"], yerr=err, marker="o",
                       capsize=3, label=f"{family} (active {rows['active_params'].iloc[0]:,})")
    for _, row in rows.iterrows():
      label = "dense" if row["num_experts"] == 1 else f"E{row['num_experts']}"
      ax.annotate(label, (row["total_params"], row["test_accuracy"]), fontsize=7,
                  xytext=(3, 3), textcoords="offset points", color=line[0].get_color())
  ax.set(xscale="log", xlabel="total parameters", ylabel="test accuracy",
         title="ViT-MoE on Fashion-MNIST: fixed active parameters")
  ax.legend(fontsize=8)
  return fig


def plot_capacity_curve(curve: pd.DataFrame, title: str):
  fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
  limited = curve[curve["capacity_factor"].notna()]
  for bpr, rows in limited.groupby("bpr"):
    ax.plot(rows["capacity_factor"], rows["accuracy"], marker="o",
            label="Batch Prioritized Routing" if bpr else "vanilla (batch order)")
  dropless = curve[curve["capacity_factor"].isna()]
  if len(dropless):
    ax.axhline(dropless["accuracy"].iloc[0], color="gray", ls="--", lw=1, label="no capacity")
  ax.set(xlabel="inference capacity factor C", ylabel="test accuracy", title=title)
  ax.legend(fontsize=8)
  return fig


def plot_class_specialization(spec: dict, class_names) -> plt.Figure:
  usage_MCE = spec["usage_MCE"]
  num_layers = usage_MCE.shape[0]
  fig, axes = plt.subplots(1, num_layers + 1, figsize=(3.2 * (num_layers + 1), 3.4),
                           layout="constrained")
  x = np.arange(num_layers)
  axes[0].bar(x - 0.2, spec["nmi"], 0.4, label="NMI(expert; class)")
  axes[0].bar(x + 0.2, spec["null_p95"], 0.4, label="permutation null (95th pct)")
  axes[0].set(xticks=x, xticklabels=[f"MoE {m}" for m in x], ylabel="NMI")
  axes[0].legend(fontsize=7)
  for m in range(num_layers):
    ax = axes[m + 1]
    ax.imshow(usage_MCE[m], aspect="auto", cmap="viridis", vmin=0.0)
    ax.set(title=f"MoE layer {m}: first choice by class", xlabel="expert",
           yticks=range(len(class_names)), yticklabels=class_names)
    ax.tick_params(labelsize=7)
  return fig


def plot_task_pruning(pruning: pd.DataFrame):
  fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
  for (routing, task), rows in pruning.groupby(["task_routing", "task"], sort=False):
    ax.plot(rows["fraction_loaded"], rows["accuracy"], marker="o", label=f"{routing}: {task}")
  ax.set(xlabel="fraction of expert weights loaded", ylabel="test accuracy of the task",
         title="A task keeps only its most used experts")
  ax.legend(fontsize=7)
  return fig


def make_figures(out_dir: str | Path, models=None, curves=None, spec=None, class_names=(),
                 pruning=None) -> dict[str, dict]:
  """Saves the figures whose inputs are given; returns name -> {png, pdf} paths."""
  out_dir = Path(out_dir)
  figures = {}
  if models is not None and len(models):
    figures["accuracy_vs_total_params"] = plot_accuracy_vs_total_params(models)
  for name, curve in (curves or {}).items():
    figures[f"capacity_curve_{name}"] = plot_capacity_curve(curve, name)
  if spec is not None:
    figures["class_specialization"] = plot_class_specialization(spec, class_names)
  if pruning is not None and len(pruning):
    figures["task_pruning"] = plot_task_pruning(pruning)
  paths = {}
  for name, fig in figures.items():
    paths[name] = save_figure(fig, out_dir / name)
    plt.close(fig)
  return paths
