"""The study's figures (Nakamura et al. 2025, "Optimal Sparsity of MoE Language Models for
Reasoning Tasks") from a sweep's results table (``analysis.results_schema``).

Every function takes the results DataFrame and returns a ``matplotlib.figure.Figure`` built
without pyplot (no global state, any backend); ``save_figure`` writes PNG and PDF.
A function whose columns are missing raises ``MissingColumnsError`` naming them;
``make_study_figures`` draws every figure it can and reports the skipped ones.
Only finished runs with a finite loss are drawn (``results_schema.finished_runs``).

Uncertainty, when the table carries it (the study's model table, ``moejax.study``): a column
``{y}_lo``/``{y}_hi`` (95% interval over evaluation items) is drawn as error bars, and
``{y}_seed_min``/``{y}_seed_max`` of a point averaged over ``num_seeds`` > 1 seeds as a pale
band behind the point (the seeds' range).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis import isoflop
from analysis.results_schema import (MissingColumnsError, add_derived_columns,
                                     finished_runs, require_columns, sc_accuracy_columns)

SUITE_LABELS = {"mem": "memorization", "reason": "reasoning"}
REASONING_PEAK_TPP = 20.0  # Nakamura et al. 2025: reasoning peaks near TPP ~ 20.


def save_figure(fig: Figure, out_stem: str | Path) -> dict[str, str]:
  """Writes ``out_stem``.png and .pdf; returns their paths."""
  out_stem = Path(out_stem)
  out_stem.parent.mkdir(parents=True, exist_ok=True)
  paths = {}
  engine = fig.get_layout_engine()
  for ext in ("png", "pdf"):
    path = out_stem.with_suffix(f".{ext}")
    fig.savefig(path, dpi=150)
    paths[ext] = str(path)
    fig.set_layout_engine("none")  # Keep the first save's layout: computing it is costly.
  fig.set_layout_engine(engine)
  return paths


def _runs(df: pd.DataFrame, columns, what: str, loss_col: str) -> pd.DataFrame:
  df = add_derived_columns(df)
  require_columns(df, columns, what)
  runs = finished_runs(df, loss_col)
  if runs.empty:
    raise ValueError(f"{what}: no finished runs with a finite {loss_col}")
  return runs


def _topk_colors(ks) -> dict:
  cmap = colormaps["tab10"]
  return {k: cmap(i % 10) for i, k in enumerate(sorted(pd.unique(ks)))}


def _budget_panels(runs: pd.DataFrame, budget_col: str = "train_flops"):
  """(label, sub-table) per compute budget, or one panel if the budget is absent."""
  if budget_col not in runs:
    return [("all runs", runs)]
  groups = isoflop.budget_groups(runs[budget_col].to_numpy())
  return [(f"C = {np.median(runs[budget_col][groups == g]):.1e} FLOPs", runs[groups == g])
          for g in np.unique(groups)]


def _uncertainty(ax, g: pd.DataFrame, x_col: str, y_col: str, color) -> None:
  """Error bars from ``{y}_lo/_hi`` and the seeds' range from ``{y}_seed_min/_max``."""
  if f"{y_col}_lo" in g and g[f"{y_col}_lo"].notna().any():
    yerr = np.stack([g[y_col] - g[f"{y_col}_lo"], g[f"{y_col}_hi"] - g[y_col]])
    ax.errorbar(g[x_col], g[y_col], yerr=np.nan_to_num(yerr.clip(min=0)), fmt="none",
                ecolor=color, elinewidth=0.8, capsize=2)
  if f"{y_col}_seed_min" in g and "num_seeds" in g:
    seeded = g[g["num_seeds"] > 1]
    ax.vlines(seeded[x_col], seeded[f"{y_col}_seed_min"], seeded[f"{y_col}_seed_max"],
              color=color, alpha=0.25, lw=5)


def _lines_by(ax, runs, x_col, y_col, group_cols, colors, label_fmt="k={}"):
  """One line per group (sorted by x), coloured by top_k, labelled once per k."""
  seen = set()
  for key, g in runs.groupby(group_cols):
    k = g["top_k"].iloc[0]
    g = g.sort_values(x_col)
    label = label_fmt.format(k) if k not in seen else None
    seen.add(k)
    ax.plot(g[x_col], g[y_col], "o-", color=colors[k], ms=4, lw=1, label=label)
    _uncertainty(ax, g, x_col, y_col, colors[k])


def plot_loss_vs_total_params(df: pd.DataFrame, loss_col: str = "final_eval_loss") -> Figure:
  """Loss vs total parameters, one line per active-parameter count, coloured by top-k.

  Finding 1 (loss falls with total parameters at fixed active ones) and finding 4 (top-k
  alone barely moves it). One panel per compute budget.
  """
  runs = _runs(df, ["total_params", "active_params", "top_k", loss_col],
               "loss vs total parameters", loss_col)
  panels = _budget_panels(runs)
  fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
  colors = _topk_colors(runs["top_k"])
  for ax, (title, sub) in zip(axes, panels):
    _lines_by(ax, sub, "total_params", loss_col, ["active_params", "top_k"], colors)
    ax.set_xscale("log")
    ax.set_xlabel("total parameters")
    ax.set_title(title, fontsize=9)
  axes[0].set_ylabel(loss_col)
  axes[-1].legend(title="top-k", fontsize=8)
  return fig


def plot_suite_vs_total_params(df: pd.DataFrame) -> Figure:
  """Task loss (top) and accuracy (bottom) vs total parameters, memorization vs reasoning.

  Findings 2 and 3: memorization improves monotonically; reasoning task loss is U-shaped
  and accuracy non-monotonic. Lines join runs of equal active parameters and budget.
  """
  cols = ["total_params", "active_params", "top_k"] + [
      f"{s}_{m}" for s in SUITE_LABELS for m in ("task_loss", "accuracy")]
  runs = _runs(df, cols, "task loss and accuracy vs total parameters", "mem_task_loss")
  group = ["active_params", "top_k"] + (["train_flops"] if "train_flops" in runs else [])
  fig = Figure(figsize=(8.4, 6.4), layout="constrained")
  axes = fig.subplots(2, 2, sharex=True)
  colors = _topk_colors(runs["top_k"])
  for j, (suite, label) in enumerate(SUITE_LABELS.items()):
    for i, metric in enumerate(("task_loss", "accuracy")):
      ax = axes[i, j]
      _lines_by(ax, runs.dropna(subset=[f"{suite}_{metric}"]), "total_params",
                f"{suite}_{metric}", group, colors)
      ax.set_xscale("log")
      ax.set_ylabel(f"{label} {metric.replace('_', ' ')}")
    axes[1, j].set_xlabel("total parameters")
  axes[0, 1].legend(title="top-k", fontsize=8)
  return fig


def plot_isoflop(df: pd.DataFrame, x_col: str = "total_params",
                 loss_col: str = "final_eval_loss", log_x: bool = True,
                 budget_col: str = "train_flops", num_resamples: int = 500,
                 seed: int = 0) -> Figure:
  """Iso-FLOP curves: loss vs ``x_col`` per budget with its parabola and optimum (95% CI),
  and the optimum against compute with the fitted power law (Hoffmann et al. approach 2).

  ``x_col`` may be "total_params", "active_params" (log scale) or "sparsity" (log_x=False),
  ``loss_col`` the pre-training loss or a task loss (finding 5).
  """
  runs = _runs(df, [budget_col, x_col, loss_col], "iso-FLOP curves", loss_col)
  optima = isoflop.isoflop_optima(runs, budget_col=budget_col, x_col=x_col,
                                  loss_col=loss_col, log_x=log_x,
                                  num_resamples=num_resamples, seed=seed)
  if not optima:
    raise ValueError("iso-FLOP curves: no budget has three distinct x values")
  fig = Figure(figsize=(9.0, 3.8), layout="constrained")
  ax, ax_opt = fig.subplots(1, 2)
  cmap = colormaps["viridis"]
  for i, opt in enumerate(optima):
    color = cmap(i / max(1, len(optima) - 1))
    xs, ys = opt.x_R, opt.loss_R
    ax.scatter(xs, ys, color=color, s=14, label=f"{opt.budget:.1e}")
    grid = np.linspace(xs.min(), xs.max(), 100)
    ax.plot(grid, np.polyval(opt.coef, grid), color=color, lw=1)
    if np.isfinite(opt.x_opt["estimate"]):
      lo, hi = opt.x_opt["ci"]
      est = opt.x_opt["estimate"]
      # A percentile interval need not contain the point estimate (few runs per budget):
      # bars are clipped at zero length rather than drawn negative (matplotlib refuses those).
      ax.errorbar([est], [opt.loss_opt["estimate"]],
                  xerr=[[max(est - lo, 0.0)], [max(hi - est, 0.0)]],
                  fmt="*", color=color, ms=10, capsize=3)
  ax.set_xlabel(f"log10 {x_col}" if log_x else x_col)
  ax.set_ylabel(loss_col)
  ax.legend(title="budget (FLOPs)", fontsize=7)
  table = isoflop.optima_table(optima)
  ok = table["interior"] & np.isfinite(table["x_opt"])
  ax_opt.errorbar(table["budget"][ok], table["x_opt"][ok],
                  yerr=[np.clip(table["x_opt"][ok] - table["x_opt_lo"][ok], 0, None),
                        np.clip(table["x_opt_hi"][ok] - table["x_opt"][ok], 0, None)],
                  fmt="o", capsize=3)
  if ok.sum() >= 2:
    fit = isoflop.optimum_scaling(optima)
    cs = np.geomspace(table["budget"][ok].min(), table["budget"][ok].max(), 50)
    slope, icpt = fit["slope"]["estimate"], fit["intercept"]["estimate"]
    lo, hi = fit["slope"]["ci"]
    ax_opt.plot(cs, slope * np.log10(cs) + icpt, "k--", lw=1,
                label=f"slope {slope:.2f} [{lo:.2f}, {hi:.2f}]")
    ax_opt.legend(fontsize=8)
  ax_opt.set_xscale("log")
  ax_opt.set_xlabel("training FLOPs")
  ax_opt.set_ylabel(f"optimal {'log10 ' if log_x else ''}{x_col}")
  return fig


def plot_accuracy_vs_tpp(df: pd.DataFrame) -> Figure:
  """Accuracy vs tokens per parameter for memorization and reasoning, coloured by top-k.

  Finding 3: reasoning peaks near TPP ~ 20 (dashed line).
  """
  runs = _runs(df, ["tpp", "top_k", "mem_accuracy", "reason_accuracy"],
               "accuracy vs tokens per parameter", "mem_accuracy")
  fig = Figure(figsize=(8.4, 3.6), layout="constrained")
  axes = fig.subplots(1, 2, sharex=True)
  colors = _topk_colors(runs["top_k"])
  for ax, (suite, label) in zip(axes, SUITE_LABELS.items()):
    for k, g in runs.groupby("top_k"):
      ax.scatter(g["tpp"], g[f"{suite}_accuracy"], color=colors[k], s=14, label=f"k={k}")
      _uncertainty(ax, g, "tpp", f"{suite}_accuracy", colors[k])
    ax.axvline(REASONING_PEAK_TPP, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("tokens per parameter")
    ax.set_ylabel(f"{label} accuracy")
  axes[1].legend(title="top-k", fontsize=8)
  return fig


def plot_generalization_gaps(df: pd.DataFrame) -> Figure:
  """Top: train-test gap (train-split minus held-out accuracy) vs total parameters.
  Bottom: accuracy vs task loss, whose spread at equal loss is the loss-accuracy gap.

  Nakamura et al. separate the two gaps; finding 4's second half (at equal loss, larger k
  reasons better) shows in the bottom-right panel as colour ordering at equal x.
  """
  cols = ["total_params", "top_k"] + [f"{s}_{m}" for s in SUITE_LABELS
                                      for m in ("task_loss", "accuracy", "train_accuracy")]
  runs = _runs(df, cols, "train-test and loss-accuracy gaps", "mem_accuracy")
  fig = Figure(figsize=(8.4, 6.4), layout="constrained")
  axes = fig.subplots(2, 2)
  colors = _topk_colors(runs["top_k"])
  for j, (suite, label) in enumerate(SUITE_LABELS.items()):
    gap = runs[f"{suite}_train_accuracy"] - runs[f"{suite}_accuracy"]
    for k, g in runs.groupby("top_k"):
      axes[0, j].scatter(g["total_params"], gap[g.index], color=colors[k], s=14,
                         label=f"k={k}")
      axes[1, j].scatter(g[f"{suite}_task_loss"], g[f"{suite}_accuracy"], color=colors[k],
                         s=14, label=f"k={k}")
    axes[0, j].set_xscale("log")
    axes[0, j].set_xlabel("total parameters")
    axes[0, j].set_ylabel(f"{label} train - test accuracy")
    axes[1, j].set_xlabel(f"{label} task loss")
    axes[1, j].set_ylabel(f"{label} accuracy")
  axes[0, 1].legend(title="top-k", fontsize=8)
  return fig


def plot_accuracy_vs_samples(df: pd.DataFrame) -> Figure:
  """Reasoning accuracy of a majority vote over n sampled answers vs n, one line per model,
  one panel per family (fixed active parameters), coloured by number of experts.

  Finding 6: test-time compute raises accuracy but does not rescue overly sparse models (the
  lines rise without crossing). Greedy accuracy is the dotted level of each model.
  """
  columns = sc_accuracy_columns(df)
  if len(columns) < 2:
    raise MissingColumnsError("accuracy vs self-consistency samples",
                              ["reason_sc{n}_accuracy for two or more n"])
  runs = _runs(df, ["family", "num_experts", *columns.values()],
               "accuracy vs self-consistency samples", "final_eval_loss")
  families = sorted(runs["family"].astype(str).unique())
  cols = min(4, len(families))
  rows = -(-len(families) // cols)
  fig = Figure(figsize=(3.4 * cols, 3.2 * rows), layout="constrained")
  axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
  cmap = colormaps["viridis"]
  experts = sorted(runs["num_experts"].unique())
  for ax in axes[len(families):]:
    ax.set_visible(False)
  for ax, family in zip(axes, families):
    members = runs[runs["family"].astype(str) == family].sort_values("num_experts")
    for i, (_, row) in enumerate(members.iterrows()):
      color = cmap(experts.index(row["num_experts"]) / max(1, len(experts) - 1))
      dodge = 2 ** (0.05 * (i - (len(members) - 1) / 2))  # keeps error bars apart
      points = pd.DataFrame({"n": np.array(list(columns)) * dodge,
                             "num_seeds": row.get("num_seeds", 1)})
      for suffix in ("", "_lo", "_hi", "_seed_min", "_seed_max"):
        points["acc" + suffix] = [row.get(c + suffix, np.nan) for c in columns.values()]
      label = "dense" if row["num_experts"] == 1 else f"E={row['num_experts']}"
      ax.plot(points["n"], points["acc"], "o-", color=color, ms=4, lw=1, label=label)
      _uncertainty(ax, points, "n", "acc", color)
      if pd.notna(row.get("reason_accuracy")):
        ax.axhline(row["reason_accuracy"], color=color, ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(columns), labels=[str(n) for n in columns])
    ax.set_xlabel("samples voted (n); dotted: greedy")
    ax.set_title(family, fontsize=9)
    ax.legend(fontsize=7)
  for ax in axes[::cols]:
    ax.set_ylabel("reasoning accuracy (majority vote)")
  return fig


STUDY_FIGURES: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "loss_vs_total_params": plot_loss_vs_total_params,
    "suite_vs_total_params": plot_suite_vs_total_params,
    "isoflop_total_params": plot_isoflop,
    "isoflop_sparsity": lambda df: plot_isoflop(df, x_col="sparsity", log_x=False),
    "accuracy_vs_tpp": plot_accuracy_vs_tpp,
    "generalization_gaps": plot_generalization_gaps,
    "accuracy_vs_samples": plot_accuracy_vs_samples,
}


def make_study_figures(df: pd.DataFrame, out_dir: str | Path) -> dict[str, dict]:
  """Draws every figure of ``STUDY_FIGURES`` into ``out_dir`` (PNG + PDF).

  Returns:
    {figure name: {"png": path, "pdf": path}} for drawn figures and
    {figure name: {"skipped": reason}} for those whose columns or runs are missing.
  """
  out = {}
  for name, draw in STUDY_FIGURES.items():
    try:
      fig = draw(df)
    except (MissingColumnsError, ValueError) as err:
      logging.warning("skipping figure %s: %s", name, err)
      out[name] = {"skipped": str(err)}
      continue
    out[name] = save_figure(fig, Path(out_dir) / name)
  return out
