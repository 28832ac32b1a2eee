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
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure

from analysis import isoflop
from analysis.results_schema import (MissingColumnsError, add_derived_columns,
                                     finished_runs, require_columns, sc_accuracy_columns)

SUITE_LABELS = {"mem": "memorization", "reason": "reasoning"}
# The accuracy each suite's verdict reads (moejax/study/verdicts.py): memorization is QA accuracy
# on facts whose QA pairs were trained on, reasoning is held-out accuracy.
ACCURACY_COLS = {"mem": "mem_train_accuracy", "reason": "reason_accuracy"}
MAX_TICKS = 6
MIN_POINTS_FOR_FIT = 3  # no curve or slope through fewer points
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


def _compact(value: float) -> str:
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= scale:
      return f"{value / scale:.3g}{suffix}"
  return f"{value:.3g}"


def log_ticks(ax, values, axis: str = "x", max_ticks: int = MAX_TICKS) -> None:
  """Explicit ticks at the data's values on a log axis (few points: matplotlib's automatic
  labels overlap or vanish), thinned so that neighbours are at least 1/``max_ticks`` of the
  axis' decades apart (so at most ``max_ticks`` + 1), rotated; no minor labels."""
  values = np.unique(np.asarray(values, np.float64)[np.isfinite(values)])
  values = values[values > 0]
  if not len(values):
    return
  log_v = np.log10(values)
  min_gap = (log_v[-1] - log_v[0]) / max_ticks  # keep labels at least this far apart
  keep = [0]
  for i in range(1, len(values)):
    if log_v[i] - log_v[keep[-1]] >= min_gap:
      keep.append(i)
  values = values[keep]
  which = ax.xaxis if axis == "x" else ax.yaxis
  which.set_minor_formatter(ticker.NullFormatter())
  which.set_major_locator(ticker.FixedLocator(values))
  which.set_major_formatter(ticker.FixedFormatter([_compact(v) for v in values]))
  if axis == "x":
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)


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
    log_ticks(ax, sub["total_params"])
    ax.set_xlabel("total parameters")
    ax.set_title(title, fontsize=9)
  axes[0].set_ylabel(loss_col)
  axes[-1].legend(title="top-k", fontsize=8)
  return fig


def _suite_metric(runs: pd.DataFrame, suite: str, metric: str) -> str:
  """The column drawn for a suite's metric: the verdict's accuracy (``ACCURACY_COLS``), and
  for memorization the task loss on the same trained facts when measured."""
  if metric == "accuracy":
    return ACCURACY_COLS[suite]
  trained = f"{suite}_train_task_loss"
  return trained if suite == "mem" and trained in runs and runs[trained].notna().any() else (
      f"{suite}_task_loss")


def plot_suite_vs_total_params(df: pd.DataFrame) -> Figure:
  """Task loss (top) and accuracy (bottom) vs total parameters, memorization vs reasoning.

  Findings 2 and 3: memorization improves monotonically; reasoning task loss is U-shaped
  and accuracy non-monotonic. Lines join runs of equal active parameters and budget. The
  memorization panels plot what finding 2's verdict reads: QA on trained facts.
  """
  cols = ["total_params", "active_params", "top_k"] + [
      _suite_metric(df, s, m) for s in SUITE_LABELS for m in ("task_loss", "accuracy")]
  runs = _runs(df, cols, "task loss and accuracy vs total parameters", cols[-1])
  group = ["active_params", "top_k"] + (["train_flops"] if "train_flops" in runs else [])
  fig = Figure(figsize=(8.4, 6.4), layout="constrained")
  axes = fig.subplots(2, 2, sharex=True)
  colors = _topk_colors(runs["top_k"])
  for j, (suite, label) in enumerate(SUITE_LABELS.items()):
    for i, metric in enumerate(("task_loss", "accuracy")):
      ax = axes[i, j]
      column = _suite_metric(runs, suite, metric)
      _lines_by(ax, runs.dropna(subset=[column]), "total_params", column, group, colors)
      ax.set_xscale("log")
      ax.set_ylabel(f"{label} {metric.replace('_', ' ')}"
                    + (" (trained facts)" if "_train_" in column else ""))
    log_ticks(axes[1, j], runs["total_params"])
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
  runs = _runs(df, [budget_col, x_col, loss_col, "active_params"], "iso-FLOP curves", loss_col)
  budgets = isoflop.isoflop_budgets(runs, budget_col)
  if not budgets:
    raise ValueError("iso-FLOP curves: no budget of equal FLOPs with varied active sizes")
  runs = pd.concat([b for _, b in budgets])
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
  if ok.sum() >= MIN_POINTS_FOR_FIT:
    fit = isoflop.optimum_scaling(optima)
    cs = np.geomspace(table["budget"][ok].min(), table["budget"][ok].max(), 50)
    slope, icpt = fit["slope"]["estimate"], fit["intercept"]["estimate"]
    lo, hi = fit["slope"]["ci"]
    ax_opt.plot(cs, slope * np.log10(cs) + icpt, "k--", lw=1,
                label=f"slope {slope:.2f} [{lo:.2f}, {hi:.2f}]")
    ax_opt.legend(fontsize=8)
  ax_opt.set_xscale("log")
  log_ticks(ax_opt, table["budget"])
  ax_opt.set_xlabel("training FLOPs")
  ax_opt.set_ylabel(f"optimal {'log10 ' if log_x else ''}{x_col}")
  return fig


def plot_accuracy_vs_tpp(df: pd.DataFrame) -> Figure:
  """Accuracy vs tokens per parameter for memorization and reasoning, coloured by top-k.

  Finding 3: reasoning peaks near TPP ~ 20 (dashed line).
  """
  runs = _runs(df, ["tpp", "top_k", *ACCURACY_COLS.values()],
               "accuracy vs tokens per parameter", ACCURACY_COLS["mem"])
  fig = Figure(figsize=(8.4, 3.6), layout="constrained")
  axes = fig.subplots(1, 2, sharex=True)
  colors = _topk_colors(runs["top_k"])
  for ax, (suite, label) in zip(axes, SUITE_LABELS.items()):
    for k, g in runs.groupby("top_k"):
      ax.scatter(g["tpp"], g[ACCURACY_COLS[suite]], color=colors[k], s=14, label=f"k={k}")
      _uncertainty(ax, g, "tpp", ACCURACY_COLS[suite], colors[k])
    ax.axvline(REASONING_PEAK_TPP, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    log_ticks(ax, runs["tpp"])
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
    log_ticks(axes[0, j], runs["total_params"])
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


def plot_optimal_sparsity(finding: dict) -> Figure:
  """Finding 5: the optimal sparsity (1 - k/E) per iso-FLOP budget, by reasoning accuracy,
  reasoning task loss and pre-training loss, with the verdict's intervals; the verdict's
  trend line when three or more budgets have an optimum."""
  numbers = finding["numbers"]
  budgets = numbers.get("budgets") or []
  if not budgets:
    raise ValueError("optimal sparsity vs budget: no iso-FLOP budget")
  fig = Figure(figsize=(5.6, 3.8), layout="constrained")
  ax = fig.subplots()
  c_C = np.array([b["budget"] for b in budgets])
  metrics = (("reason_accuracy", "reasoning accuracy", "o"),
             ("reason_task_loss", "reasoning task loss", "s"),
             ("train_loss", f"pre-training loss ({numbers.get('loss_column')})", "^"))
  for i, (key, label, marker) in enumerate(metrics):
    est_C = np.array([b[key]["estimate"] for b in budgets], np.float64)
    ci_C2 = np.array([[np.nan, np.nan] if b[key]["ci"][0] is None else b[key]["ci"]
                      for b in budgets], np.float64)
    x_C = c_C * 1.06 ** (i - 1)  # side by side
    yerr = np.nan_to_num(np.stack([est_C - ci_C2[:, 0], ci_C2[:, 1] - est_C]).clip(min=0))
    ax.errorbar(x_C, est_C, yerr=yerr, fmt=marker, ms=5, capsize=3, label=label)
    trend = (numbers.get("trend_per_decade") or {}).get(key)
    finite = np.isfinite(est_C)
    if trend and finite.sum() >= MIN_POINTS_FOR_FIT and trend["estimate"] is not None:
      log_c = np.log10(c_C[finite])
      line = trend["estimate"] * (log_c - log_c.mean()) + est_C[finite].mean()
      ax.plot(c_C[finite], line, ls="--", lw=1, color=ax.lines[-1].get_color())
  ax.set_xscale("log")
  log_ticks(ax, c_C)
  ax.set_xlabel("training FLOPs (iso-FLOP budget)")
  ax.set_ylabel("optimal sparsity 1 - k/E")
  ax.set_title(f"finding 5: {finding['verdict']}", fontsize=9)
  ax.legend(fontsize=7)
  return fig


def plot_gap_vs_hparams(df: pd.DataFrame, finding: dict | None = None) -> Figure:
  """Finding 7: the reasoning generalization gap (train_eval minus test accuracy) against
  learning rate and init scale (one line per model of the sweep, the other knob at its base
  value) and against sparsity in the fixed-active families; the verdict in the title."""
  # pylint: disable-next=import-outside-toplevel  (analysis is imported by moejax.study)
  from moejax.study import verdict_common, verdicts_budget, verdicts_hparams
  gap = verdicts_hparams.VERDICT_GAP
  panels = {knob: verdicts_hparams.knob_rows(df, knob) for knob in verdicts_hparams.KNOBS}
  if not any(panels.values()):
    raise ValueError("generalization gap vs lr / init: no lr or init sweep")
  fig = Figure(figsize=(10.5, 3.4), layout="constrained")
  axes = fig.subplots(1, 3, sharey=True)
  for ax, (knob, groups) in zip(axes, panels.items()):
    for rows in groups:
      label = f"d{rows['d_model'].iloc[0]} E{rows['num_experts'].iloc[0]} k{rows['top_k'].iloc[0]}"
      ax.plot(rows[knob], verdicts_hparams.gap_values(rows, gap), "o-", ms=4, lw=1,
              label=label)
    ax.set_xscale("log")
    log_ticks(ax, pd.concat(groups)[knob] if groups else [])
    ax.set_xlabel(verdicts_hparams.KNOBS[knob])
    if groups:
      ax.legend(fontsize=7)
  for family, runs in verdict_common.families(df, min_sizes=2).items():
    axes[2].plot(verdicts_budget.sparsity_of(runs), verdicts_hparams.gap_values(runs, gap), "o-", ms=4, lw=1,
                 label=family)
  axes[2].set_xlabel("sparsity 1 - k/E (fixed-active families)")
  if axes[2].lines:
    axes[2].legend(fontsize=7)
  axes[0].set_ylabel("reasoning train - test accuracy")
  if finding is not None:
    fig.suptitle(f"finding 7: {finding['verdict']}", fontsize=9)
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
# Figures drawn from a verdict (moejax.study.verdicts): name: (finding, draw(df, verdict)).
VERDICT_FIGURES: dict[str, tuple[int, Callable[[pd.DataFrame, dict], Figure]]] = {
    "optimal_sparsity_vs_budget": (5, lambda df, v: plot_optimal_sparsity(v)),
    "gap_vs_lr_init": (7, plot_gap_vs_hparams),
}


def _without_knob_sweep(df: pd.DataFrame) -> pd.DataFrame:
  """``df`` less the learning-rate / init sweep's off-base runs (``lr`` and ``init_scale``
  columns: init scale 1 and the most common learning rate are the base), which would put
  several points of one model at one x in the size figures."""
  if "lr" not in df or "init_scale" not in df or df["lr"].isna().all():
    return df
  # pylint: disable-next=import-outside-toplevel  (analysis is imported by moejax.study)
  from moejax.study import verdicts_hparams
  base = (np.isclose(df["init_scale"], verdicts_hparams.BASE_INIT_SCALE)
          & np.isclose(df["lr"], df["lr"].mode().iloc[0]))
  return df[df["init_scale"].isna() | base]


def make_study_figures(df: pd.DataFrame, out_dir: str | Path,
                       verdicts: list[dict] | None = None) -> dict[str, dict]:
  """Draws every figure of ``STUDY_FIGURES`` (and, given the study's ``verdicts``, of
  ``VERDICT_FIGURES``) into ``out_dir`` (PNG + PDF).

  Returns:
    {figure name: {"png": path, "pdf": path}} for drawn figures and
    {figure name: {"skipped": reason}} for those whose columns or runs are missing.
  """
  base = _without_knob_sweep(df)
  draws = {name: (draw, base) for name, draw in STUDY_FIGURES.items()}
  by_finding = {v["finding"]: v for v in verdicts or []}
  for name, (finding, draw) in VERDICT_FIGURES.items():
    if finding in by_finding:
      draws[name] = (lambda table, draw=draw, v=by_finding[finding]: draw(table, v), df)
  out = {}
  for name, (draw, table) in draws.items():
    try:
      fig = draw(table)
    except (MissingColumnsError, ValueError) as err:
      logging.warning("skipping figure %s: %s", name, err)
      out[name] = {"skipped": str(err)}
      continue
    out[name] = save_figure(fig, Path(out_dir) / name)
  return out
