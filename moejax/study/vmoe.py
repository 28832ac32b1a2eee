"""The ViT-MoE image sparsity study end to end: sweep -> analyses -> figures -> report.

  python -m experiments.reproduce_vmoe --preset=tiny --workdir=runs/vmoe

Analyses run on one device outside the runs' meshes (graphs are rebuilt per setting).

1. The sweep ``configs/sweeps/vmoe.py:PRESET`` runs through moejax.sweeps (finished runs are
   skipped); each run's trainer writes eval.json (test accuracy per task) and eval_items.npz.
2. Sparsity: test accuracy per model (seeds averaged) with 95% bootstrap intervals over test
   images, and its Spearman correlation with total parameters per family of fixed active
   parameters (moejax/study/vmoe_analysis.py).
3. Capacity: the first seed of the family's E=8 model (or its largest E) evaluated at inference
   capacity factors 0.25..1.25 with and without BPR.
4. Specialisation: NMI between first-choice expert and class per MoE layer, against a
   permutation null; usage by class.
5. Task routing: per-task accuracy of the shared, per-task and one-hot routers; the overlap
   of the experts the two tasks use; accuracy when a task loads only its most used experts.
Outputs: DIR/report.md, DIR/summary.json, DIR/figures/*.png|pdf, DIR/sweep/ (runs, table).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from moejax.study import report as report_lib, seeds
from moejax.study import vmoe_analysis as analysis

SWEEP = "configs/sweeps/vmoe.py"
CAPACITY_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25)


def image_columns(run, run_dir: str) -> dict[str, float]:
  """Evaluation hook for moejax.sweeps: the test accuracies from the run's eval.json."""
  del run
  with open(os.path.join(run_dir, "eval.json")) as f:
    results = json.load(f)
  return {k: float(v) for k, v in results.items() if k.startswith("test_accuracy")}


def _load_items(names, sweep_dir: str) -> dict[str, dict[str, np.ndarray]]:
  from moejax.sweeps.runner import run_dir  # pylint: disable=import-outside-toplevel
  from moejax.tasks.vit import ITEMS_FILENAME  # pylint: disable=import-outside-toplevel
  out = {}
  for name in names:
    with np.load(os.path.join(run_dir(sweep_dir, name), ITEMS_FILENAME)) as arrays:
      out[name] = dict(arrays)
  return out


def run_study(workdir: str, *, preset: str = "tiny", processes: int = 2,
              overrides: tuple[str, ...] = (), sweep: str = SWEEP) -> dict[str, Any]:
  """Runs (or resumes) the sweep and the analyses; writes report.md and summary.json."""
  from analysis.vmoe_figures import make_figures  # pylint: disable=import-outside-toplevel
  from moejax.sweeps import load_sweep, run_sweep  # pylint: disable=import-outside-toplevel
  from moejax.sweeps.runner import run_dir  # pylint: disable=import-outside-toplevel
  from moejax.sweeps.spec import apply_overrides  # pylint: disable=import-outside-toplevel
  from moejax.training.restore import restore_run  # pylint: disable=import-outside-toplevel
  start = time.time()
  runs = apply_overrides(load_sweep(f"{sweep}:{preset}"), list(overrides))
  os.makedirs(workdir, exist_ok=True)
  sweep_dir = os.path.join(workdir, "sweep")
  df = run_sweep(runs, sweep_dir, processes=processes, evaluate=image_columns)
  sweep_s = time.time() - start
  done = df[df["status"] == "done"]
  sparsity = done[done["study"] == "sparsity"]
  tasks = done[done["study"] == "tasks"]
  summary: dict[str, Any] = {"preset": preset, "runs": len(df), "runs_done": len(done)}
  models, trends = pd.DataFrame(), {}
  if len(sparsity):
    models = seeds.by_model(sparsity)
    models, trends = analysis.accuracy_table(models, _load_items(sparsity["name"], sweep_dir))
  steps = [f"capacity {family}" for family in sparsity["family"].unique()]
  steps += ["specialisation"] * bool(len(sparsity)) + [f"tasks {n}" for n in tasks["name"]]
  bar = tqdm(total=len(steps), desc="analyses", unit="step")
  curves, spec, class_names, pruning, task_results = {}, None, (), [], {}
  for family, rows in sparsity.groupby("family", sort=False):
    name = seeds.pick_run(rows)
    curves[f"{family} {name}"] = analysis.capacity_curve(restore_run(run_dir(sweep_dir, name)),
                                                         CAPACITY_FACTORS)
    bar.update(1)
  if len(sparsity):
    name = seeds.pick_run(sparsity[sparsity["top_k"] == sparsity["top_k"].max()])
    run = restore_run(run_dir(sweep_dir, name))
    source = analysis.test_source(run.config)
    out = analysis.token_choices(run, source)
    class_names = source.class_names_per_task[0]
    spec = analysis.class_specialization(out["expert_choices"], out["labels"],
                                         len(class_names), run.config.model.moe.num_experts)
    spec["run"] = name
    bar.update(1)
  for _, row in tasks.iterrows():
    result = analysis.task_routing(restore_run(run_dir(sweep_dir, row["name"])))
    routing = row["task_routing"]
    pruning.append(result["pruning"].assign(task_routing=routing))
    task_results[routing] = {"run": row["name"], "accuracy": result["accuracy"],
                             "overlap_per_layer": result["overlap"],
                             "usage_MTE": result["usage_MTE"].round(4).tolist()}
    bar.update(1)
  bar.close()
  pruning_df = pd.concat(pruning, ignore_index=True) if pruning else pd.DataFrame()
  figures = make_figures(os.path.join(workdir, "figures"), models=models, curves=curves,
                         spec=spec, class_names=class_names, pruning=pruning_df)
  summary.update({
      "models": models.drop(columns=["config_json"], errors="ignore").to_dict("records"),
      "spearman_accuracy_total_params": trends,
      "capacity_curves": {k: v.to_dict("records") for k, v in curves.items()},
      "specialization": None if spec is None else {
          k: (v.round(4).tolist() if isinstance(v, np.ndarray) else v) for k, v in spec.items()},
      "task_routing": task_results, "task_pruning": pruning_df.to_dict("records"),
      "figures": figures, "sweep_wall_time_s": sweep_s, "wall_time_s": time.time() - start})
  summary = report_lib.json_safe(summary)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(render_report(summary, models, curves, pruning_df))
  return summary


def _trend_text(trend: dict) -> str:
  lo, hi = trend["ci"]
  return f"{trend['estimate']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def render_report(summary: dict, models: pd.DataFrame, curves: dict,
                  pruning: pd.DataFrame) -> str:
  """report.md: the tables and figures of every analysis, with the results stated."""
  lines = ["# ViT-MoE image sparsity study", "",
           f"Preset `{summary['preset']}`: {summary['runs_done']} of {summary['runs']} runs "
           f"done; sweep {summary['sweep_wall_time_s'] / 60:.1f} min, total "
           f"{summary['wall_time_s'] / 60:.1f} min.", ""]
  if len(models):
    columns = ["name", "family", "num_experts", "top_k", "total_params", "active_params",
               "num_seeds", "test_accuracy"]
    lines += ["## Test accuracy at fixed active parameters", "",
              "Seed mean; [95% bootstrap interval over test images]; ± spread (sd) over seeds. "
              "The dense baseline of each family matches its FFN FLOPs.", "",
              report_lib.markdown_table(models, columns), ""]
    for family, trend in summary["spearman_accuracy_total_params"].items():
      lo, hi = trend["ci"]
      verdict = ("rises with total parameters" if lo > 0 else "falls with total parameters"
                 if hi < 0 else "shows no clear trend with total parameters")
      rows = models[models["family"] == family]
      span = 100 * (rows["test_accuracy"].max() - rows["test_accuracy"].min())
      seed_sd = 100 * rows.get("test_accuracy_seed_sd", pd.Series([np.nan])).max()
      lines.append(f"- Family {family}: Spearman(accuracy, total parameters) = "
                   f"{_trend_text(trend)}: accuracy {verdict} (interval over test images, "
                   f"seeds averaged). The models span {span:.2f} accuracy points; the largest "
                   f"seed sd is {seed_sd:.2f} points, a spread the interval over images does "
                   "not include.")
    lines += ["", "![accuracy](figures/accuracy_vs_total_params.png)", ""]
  for name, curve in curves.items():
    lines += [f"## Inference capacity: {name}", "",
              report_lib.markdown_table(curve, ["capacity_factor", "bpr", "accuracy",
                                                "dropped_fraction"]), "",
              f"![capacity](figures/capacity_curve_{name.replace(' ', '%20')}.png)", ""]
  spec = summary.get("specialization")
  if spec:
    lines += [f"## Expert specialisation by class ({spec['run']})", "",
              "| MoE layer | NMI(expert; class) | null mean | null 95th pct |", "|---|---|---|---|"]
    for m, (nmi, mean, p95) in enumerate(zip(spec["nmi"], spec["null_mean"], spec["null_p95"])):
      lines.append(f"| {m} | {nmi:.4f} | {mean:.4f} | {p95:.4f} |")
    lines += ["", "![specialisation](figures/class_specialization.png)", ""]
  if summary["task_routing"]:
    lines += ["## Task-conditioned routing (two tasks on the same images, experts shared)", "",
              "| router | accuracy per task | expert overlap per MoE layer |", "|---|---|---|"]
    for routing, result in summary["task_routing"].items():
      acc = ", ".join(f"{t} {a:.4f}" for t, a in result["accuracy"].items())
      overlap = ", ".join(f"{o:.2f}" for o in result["overlap_per_layer"])
      lines.append(f"| {routing} | {acc} | {overlap} |")
    lines += ["", "Overlap = sum over experts of min(usage of task 0, usage of task 1) "
              "(1: the same experts in the same proportions).", "",
              report_lib.markdown_table(pruning, ["task_routing", "task", "experts_kept",
                                                  "fraction_loaded", "accuracy",
                                                  "full_accuracy"]),
              "", "![pruning](figures/task_pruning.png)", ""]
  return "\n".join(lines) + "\n"
