"""The DiT-MoE study end to end: sweep -> image metric -> routing analyses -> figures -> report.

  python -m experiments.reproduce_dit_moe --preset=tiny --workdir=runs/dit

1. The feature classifier of the data set is trained once, here, before the runs (they load
   it from the cache; moejax/diffusion/metric.py).
2. The sweep ``configs/sweeps/dit_moe.py:PRESET`` runs through moejax.sweeps (finished runs
   are skipped); each run's eval.json holds FD-CNN, its floor and the conditional accuracy of
   class-balanced samples from the EMA weights.
3. Per model: seed means with Student-t intervals over seeds (moejax/study/intervals.py).
4. Routing (moejax/study/dit_routing.py) of the seed-0 E=8 DiT-MoE with the shared expert
   (else the largest E): NMI of first choice with timestep bin, class and position against
   permutation nulls, usage heatmaps, usage entropy by timestep and layer.
5. A grid of samples per class from the same model.
Outputs: DIR/report.md, DIR/summary.json, DIR/figures/*.png|pdf, DIR/sweep/ (runs, table).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from moejax.study import report as report_lib, seeds
from moejax.study.intervals import seed_interval

SWEEP = "configs/sweeps/dit_moe.py"
METRICS = ("fd_cnn", "fd_cnn_floor", "conditional_accuracy", "classifier_test_accuracy")
ROUTING_IMAGES, TIME_BINS, SAMPLES_PER_CLASS = 400, 8, 8


def dit_columns(run, run_dir: str) -> dict[str, float]:
  """Evaluation hook for moejax.sweeps: the image metric from the run's eval.json."""
  del run
  with open(os.path.join(run_dir, "eval.json")) as f:
    results = json.load(f)
  return {k: float(results[k]) for k in METRICS + ("eval_loss",) if k in results}


def model_table(runs: pd.DataFrame) -> pd.DataFrame:
  """One row per model: seed means and t intervals over seeds of FD-CNN and accuracy (the
  accuracy's clipped to [0, 1], FD-CNN's to >= 0: with 2 seeds t = 12.7 overshoots both)."""
  models = seeds.by_model(runs)
  for metric, top in (("fd_cnn", np.inf), ("conditional_accuracy", 1.0)):
    bounds = [seed_interval(runs.loc[runs["name"].isin(names.split(",")), metric])["ci"]
              for names in models["runs"]]
    models[f"{metric}_lo"], models[f"{metric}_hi"] = np.clip(np.asarray(bounds, float), 0.0,
                                                             top).T
  return models


def analyse_run(run, num_images: int = ROUTING_IMAGES, per_class: int = SAMPLES_PER_CLASS):
  """(routing analysis, samples [classes, per_class, H, W, C], class names) of a run."""
  from moejax.study import dit_routing  # pylint: disable=import-outside-toplevel
  from moejax.tasks import dit as dit_task  # pylint: disable=import-outside-toplevel
  config = run.config
  task = dit_task.DiTTask()
  test = task.load_split(config, "test")
  rows = np.random.default_rng(0).permutation(len(test.labels_N))[:num_images]
  images = 2.0 * test.images_NHWC[rows] - 1.0
  found = dit_routing.choices(run, images, test.labels_N[rows], TIME_BINS)
  routing = dit_routing.analyse(found["first_MRS"], found["time_bin_R"], found["class_R"],
                                config.model.num_classes, TIME_BINS, found["num_experts"])
  labels = np.repeat(np.arange(config.model.num_classes), per_class)
  with run.context():
    samples = dit_task.generate(config, run.graphdef, dit_task.inference_params(run.state),
                                run.state.model_state, labels)
  shape = (config.model.num_classes, per_class) + samples.shape[1:]
  return routing, samples.reshape(shape), test.class_names


def run_study(workdir: str, *, preset: str = "tiny", processes: int = 2,
              overrides: tuple[str, ...] = (), sweep: str = SWEEP) -> dict[str, Any]:
  """Runs (or resumes) the sweep and the analyses; writes report.md and summary.json."""
  from analysis.dit_figures import make_figures  # pylint: disable=import-outside-toplevel
  from moejax.diffusion import metric  # pylint: disable=import-outside-toplevel
  from moejax.sweeps import load_sweep, run_sweep  # pylint: disable=import-outside-toplevel
  from moejax.sweeps.runner import run_dir  # pylint: disable=import-outside-toplevel
  from moejax.sweeps.spec import apply_overrides  # pylint: disable=import-outside-toplevel
  from moejax.training.restore import restore_run  # pylint: disable=import-outside-toplevel
  start = time.time()
  runs = apply_overrides(load_sweep(f"{sweep}:{preset}"), list(overrides))
  model = runs[0].config.model
  _, classifier = metric.feature_classifier(runs[0].config.data.dataset, model.image_size,
                                            model.channels)
  classifier_s = time.time() - start
  os.makedirs(workdir, exist_ok=True)
  sweep_dir = os.path.join(workdir, "sweep")
  df = run_sweep(runs, sweep_dir, processes=processes, evaluate=dit_columns)
  sweep_s = time.time() - start - classifier_s
  done = df[df["status"] == "done"]
  summary: dict[str, Any] = {"preset": preset, "runs": len(df), "runs_done": len(done),
                             "classifier": classifier}
  models = model_table(done) if len(done) else pd.DataFrame()
  floor = float(done["fd_cnn_floor"].mean()) if len(done) else None
  routing, samples, class_names, picked = None, None, (), None
  shared_moe = done[(done["num_experts"] > 1) & (done["family"] == "shared")]
  if len(shared_moe):
    picked = seeds.pick_run(shared_moe)
    routing, samples, class_names = analyse_run(restore_run(run_dir(sweep_dir, picked)))
  figures = make_figures(os.path.join(workdir, "figures"), models=models, floor=floor,
                         routing=routing, samples=samples, class_names=class_names)
  summary.update({
      "models": models.drop(columns=["config_json"], errors="ignore").to_dict("records"),
      "fd_cnn_floor": floor, "routing_run": picked,
      "routing": None if routing is None else _routing_summary(routing),
      "figures": figures, "classifier_wall_time_s": classifier_s, "sweep_wall_time_s": sweep_s,
      "wall_time_s": time.time() - start})
  summary = report_lib.json_safe(summary)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(render_report(summary, models))
  return summary


def _routing_summary(routing: dict) -> dict:
  out = {name: {k: (np.round(v, 4).tolist() if isinstance(v, np.ndarray) else v)
                for k, v in routing[name].items()} for name in ("timestep", "class", "position")}
  out["entropy_by_timestep"] = np.round(routing["entropy_by_timestep"], 4).tolist()
  out["entropy_by_layer"] = np.round(routing["entropy_by_layer"], 4).tolist()
  return out


def _verdict(stats: dict, m: int) -> str:
  return "above null" if stats["nmi"][m] > stats["null_p95"][m] else "within null"


def render_report(summary: dict, models: pd.DataFrame) -> str:
  """report.md: the table, the routing numbers and the figures, with the results stated."""
  lines = ["# DiT-MoE study", "",
           f"Preset `{summary['preset']}`: {summary['runs_done']} of {summary['runs']} runs done; "
           f"classifier {summary['classifier_wall_time_s'] / 60:.1f} min, sweep "
           f"{summary['sweep_wall_time_s'] / 60:.1f} min, total "
           f"{summary['wall_time_s'] / 60:.1f} min.", "",
           f"Image metric: FD-CNN, the Frechet distance in the 128-d features of a CNN trained "
           f"here on the same data (test accuracy "
           f"{summary['classifier']['test_accuracy']:.4f}); NOT comparable with Inception FID. "
           f"Real-vs-real floor (train vs test images): {summary['fd_cnn_floor']:.3f}.", ""]
  if len(models):
    columns = ["name", "family", "num_experts", "total_params", "active_params", "num_seeds",
               "fd_cnn", "fd_cnn_lo", "fd_cnn_hi", "conditional_accuracy",
               "conditional_accuracy_lo", "conditional_accuracy_hi"]
    lines += ["## Sample quality at matched active FFN FLOPs", "",
              "Seed mean; _lo/_hi: 95% Student-t interval over seeds (2 seeds: t = 12.7, "
              "wide by construction). Dense baselines match the MoE models' active FFN "
              "FLOPs (k experts + shared).", "",
              report_lib.markdown_table(models, columns), "",
              "![fd](figures/fd_by_model.png)", ""]
  routing = summary.get("routing")
  if routing:
    lines += [f"## Routing of {summary['routing_run']}", "",
              "First-choice expert of every patch token of noisy test images at "
              f"{TIME_BINS} noise levels. NMI against a permutation null (95th percentile).",
              "", "| MoE layer | NMI timestep (null p95) | NMI class (null p95) | "
              "NMI position (null p95) | usage entropy |", "|---|---|---|---|---|"]
    for m, entropy in enumerate(routing["entropy_by_layer"]):
      cells = [f"{routing[a]['nmi'][m]:.4f} ({routing[a]['null_p95'][m]:.4f}, "
               f"{_verdict(routing[a], m)})" for a in ("timestep", "class", "position")]
      lines.append(f"| {m} | " + " | ".join(cells) + f" | {entropy:.3f} |")
    lines += ["", "Usage entropy by timestep bin (rows: MoE layers; columns: bin 0 = least "
              "noise ... last = most noise; 1 = uniform over experts):", ""]
    for m, row in enumerate(routing["entropy_by_timestep"]):
      lines.append(f"- layer {m}: " + ", ".join(f"{v:.3f}" for v in row))
    lines += ["", "![nmi](figures/routing_nmi.png)", "",
              "![timestep](figures/routing_timestep.png)", "",
              "![class](figures/routing_class.png)", "",
              "![position](figures/routing_position.png)", "",
              "## Samples (one row per class, guidance from config.sample)", "",
              "![samples](figures/samples.png)", ""]
  return "\n".join(lines) + "\n"
