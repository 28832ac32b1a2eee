"""Writes a study's report.md (figures embedded, results table, verdicts) and summary.json.

The results table has one row per model (seeds averaged, ``seeds.by_model``). A metric with a
bootstrap interval over evaluation items (``{metric}_lo``/``_hi`` columns,
``intervals.ItemBootstrap.with_intervals``) is shown as ``estimate [lo, hi]``; with several
seeds, ``± sd`` adds the sample standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
import pandas as pd

TABLE_COLUMNS = ("name", "num_seeds", "total_params", "active_params", "top_k",
                 "final_eval_loss", "mem_train_accuracy", "mem_accuracy", "reason_accuracy",
                 "reason_task_loss", "reason_sc*_accuracy", "status")
# Metrics whose intervals and seed spread summary.json lists per model.
_INTERVAL_METRICS = re.compile(r"^(mem_train|mem|reason_train|reason)_"
                               r"(accuracy|sc\d+_accuracy|pass_at_\d+)$")


def wilson_interval(accuracy: float, count: float, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of an accuracy over ``count`` evaluation items."""
  if not count or not np.isfinite(accuracy):
    return (float("nan"), float("nan"))
  centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
  half = z * math.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count))
  half /= 1 + z * z / count
  return (max(0.0, centre - half), min(1.0, centre + half))


def table_columns(df: pd.DataFrame, patterns=TABLE_COLUMNS) -> list[str]:
  """Columns of ``df`` matching ``patterns`` (``*`` = digits), in pattern order, n ascending."""
  out = []
  for pattern in patterns:
    regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"(\d+)") + "$")
    found = [(c, regex.match(c)) for c in df.columns if regex.match(c)]
    out += [c for c, m in sorted(found, key=lambda f: [int(g) for g in f[1].groups()])]
  return out


def _number(value: Any) -> str:
  if isinstance(value, (float, np.floating)):
    return "" if not np.isfinite(value) else f"{value:.4g}"
  if isinstance(value, (int, np.integer)) and abs(value) >= 10_000:
    return f"{value / 1e6:.2f}M"
  return str(value)


def _cell(row: pd.Series, column: str) -> str:
  text = _number(row[column])
  lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
  if text and lo is not None and np.isfinite(lo) and np.isfinite(hi):
    text += f" [{lo:.3g}, {hi:.3g}]"
  sd = row.get(f"{column}_seed_sd")
  if text and sd is not None and np.isfinite(sd) and row.get("num_seeds", 1) > 1:
    text += f" ± {sd:.2g}"
  return text


def markdown_table(df: pd.DataFrame, columns=None) -> str:
  columns = table_columns(df) if columns is None else [c for c in columns if c in df.columns]
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for _, row in df.iterrows():
    lines.append("| " + " | ".join(_cell(row, c) for c in columns) + " |")
  return "\n".join(lines)


def accuracy_intervals(models: pd.DataFrame) -> dict[str, dict[str, dict]]:
  """Per model and accuracy: estimate, bootstrap interval over items, spread over seeds.

  Without per-item results (runs evaluated before eval_items.npz existed), the interval is
  the Wilson score interval of the count of items (``method`` says which).
  """
  out: dict[str, dict[str, dict]] = {}
  for _, row in models.iterrows():
    for metric in (c for c in models.columns if _INTERVAL_METRICS.match(c)):
      if pd.isna(row[metric]):
        continue
      entry = {"estimate": float(row[metric]), "num_seeds": int(row.get("num_seeds", 1)),
               "seed_sd": float(row.get(f"{metric}_seed_sd", np.nan))}
      if pd.notna(row.get(f"{metric}_lo", np.nan)):
        entry.update(ci=[float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"])],
                     method="bootstrap")
      else:
        count = row.get(f"{_INTERVAL_METRICS.match(metric).group(1)}_count", np.nan)
        entry.update(ci=list(wilson_interval(float(row[metric]), float(count))),
                     method="wilson")
      out.setdefault(row["name"], {})[metric] = entry
  return out


def difficulty_section(models: pd.DataFrame) -> list[str]:
  """Report lines: reasoning test accuracy per model by difficulty (number of operations), so a
  reader sees where each model stops, with the guessing baselines."""
  columns = table_columns(models, ("name", "reason_accuracy_d*"))
  if len(columns) < 2:
    return []
  baselines = [f"{label} {models[col].max():.3f}" for col, label in (
      ("reason_chance_accuracy", "guessing a residue (1/p)"),
      ("reason_majority_accuracy", "always giving the most common answer"))
               if col in models and models[col].notna().any()]
  return ["", "## Reasoning accuracy by difficulty (operations per problem)", "",
          markdown_table(models, columns), "",
          "Baselines: " + (", ".join(baselines) or "none recorded") + "."]


def json_safe(value: Any) -> Any:
  """``value`` with non-finite floats as None (strict JSON) and numpy scalars unwrapped."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _fmt(value: Any, fmt: str = "+.2f") -> str:
  return f"{value:{fmt}}" if isinstance(value, (int, float)) and np.isfinite(value) else "n/a"


def _estimate(entry: Any, fmt: str = "+.3f") -> str:
  """``estimate [lo, hi]`` of an interval dict (``{"estimate", "ci"}``), or n/a."""
  if not isinstance(entry, dict):
    return "n/a"
  text = _fmt(entry.get("estimate"), fmt)
  lo, hi = entry.get("ci") or (None, None)
  if text != "n/a" and _fmt(lo) != "n/a" and _fmt(hi) != "n/a":
    text += f" [{lo:{fmt}}, {hi:{fmt}}]"
  return text


def headline(v: dict) -> str:
  """One number line per finding, for the verdict table a person reads first."""
  n = v.get("numbers", {})
  finding = v["finding"]
  if finding == 1:
    return (f"mean Spearman of {n.get('column', 'loss')} with total params "
            f"{_fmt(n.get('mean_spearman'))}")
  if finding == 2:
    return ("mean Spearman of memorization accuracy with total params "
            + _estimate({"estimate": n.get("mean_spearman"), "ci": n.get("mean_spearman_ci")},
                        "+.2f"))
  if finding == 3:
    shapes = n.get("shapes") or {}
    rhos = [r for r in (n.get("spearman") or {}).values() if _fmt(r) != "n/a"]
    return (f"interior peak in {n.get('interior_peaks', 0)}/{len(shapes)} families, U-shaped "
            f"task loss in {n.get('u_shaped_task_loss', 0)}/{len(shapes)}; mean Spearman of "
            f"accuracy {_fmt(float(np.mean(rhos)) if rhos else None)}")
  if finding == 4:
    return (f"train-loss change {_fmt(n.get('mean_loss_change'), '+.1%')} at fixed total; "
            "equal-loss accuracy change (larger k) "
            f"{_fmt(n.get('equal_loss_mean_change'), '+.3f')}")
  if finding == 5:
    trend = (n.get("trend_per_decade") or {}).get("reason_accuracy")
    return (f"{len(n.get('budgets', []))} budgets; accuracy-optimal sparsity per decade "
            f"{_estimate(trend)}")
  if finding == 6:
    parts = []
    if "mean_gain" in n:
      gain = {"estimate": n["mean_gain"], "ci": n.get("mean_gain_ci")}
      parts.append(f"SC gain {_estimate(gain)}, order Spearman {_fmt(n.get('order_spearman'))}")
    if n.get("grpo"):
      parts.append(f"GRPO gain {_fmt(n['grpo'].get('mean_gain'), '+.3f')}, order Spearman "
                   f"{_fmt(n['grpo'].get('order_spearman'))}")
    return "; ".join(parts) or "no self-consistency or GRPO results"
  if finding == 7:
    gap = (n.get("effects") or {}).get("reason_accuracy_gap", {})
    return ("reasoning gap change: " + ", ".join(f"{k} {_estimate(e)}" for k, e in gap.items())
            if gap else "no lr / init sweep")
  return ""


def verdict_table(verdicts: list[dict]) -> str:
  """A plain-text table: finding, verdict, one line of numbers."""
  rows = [("finding", "verdict", "numbers")] + [
      (str(v["finding"]), v["verdict"], headline(v)) for v in verdicts]
  widths = [max(len(r[i]) for r in rows) for i in range(2)]
  return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def write(workdir: str, runs: pd.DataFrame, models: pd.DataFrame, verdicts: list[dict],
          figures: dict[str, dict], fits: dict[str, Any],
          extra: dict[str, Any]) -> dict[str, Any]:
  """Writes DIR/report.md and DIR/summary.json; returns the summary.

  Args:
    workdir: the study directory.
    runs: the sweep's results table (one row per run, every status).
    models: the finished runs' model table (``seeds.by_model``, with interval columns).
    verdicts: ``verdicts.all_verdicts``.
    figures: ``make_study_figures``' {name: paths or {"skipped": reason}}.
    fits: fitted laws.
    extra: more summary keys (preset, wall_time_s, intervals settings, ...).
  """
  memorization = next(v for v in verdicts if v["finding"] == 2)["numbers"]
  summary = json_safe({
      "memorization_spearman_total_params": memorization.get("mean_spearman"),
      "memorization_spearman_total_params_ci": memorization.get("mean_spearman_ci",
                                                                [None, None]),
      "verdicts": verdicts, "fits": fits, "accuracy_intervals": accuracy_intervals(models),
      "runs": int(len(runs)), "runs_done": int((runs["status"] == "done").sum()),
      "models": int(len(models)), **extra,
  })
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  lines = ["# Optimal sparsity of MoE LMs: memorization vs reasoning (tiny reproduction)", "",
           f"Preset `{extra.get('preset')}`, {summary['runs_done']} of {summary['runs']} runs "
           f"done ({summary['models']} models), wall time "
           f"{extra.get('wall_time_s', float('nan')):.0f} s.", "",
           "## Findings (Nakamura et al. 2025; docs/optimal_sparsity.md)", ""]
  for v in verdicts:
    lines.append(f"{v['finding']}. **{v['verdict']}**: {v['statement']}")
  lines += ["", "## Fits", "", "```", json.dumps(json_safe(fits), indent=2), "```", "",
            "## Figures", ""]
  for name, paths in figures.items():
    if "png" in paths:
      lines.append(f"![{name}]({os.path.relpath(paths['png'], workdir)})")
    else:
      lines.append(f"- {name}: skipped ({paths.get('skipped')})")
  unfinished = runs[runs["status"] != "done"]
  lines += ["", "## Models", "", markdown_table(models), "",
            "Accuracies and task losses: estimate [95% percentile-bootstrap interval over "
            "evaluation items] ± standard deviation over seeds (with several seeds; the "
            "estimate is then the seed mean). summary.json lists every interval."]
  lines += difficulty_section(models)
  if len(unfinished):
    lines += ["", "Unfinished runs: " + ", ".join(
        f"{r['name']} ({r['status']})" for _, r in unfinished.iterrows()) + "."]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return summary
