"""Writes a study's report.md (figures embedded, results table, verdicts) and summary.json."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pandas as pd

TABLE_COLUMNS = ("name", "total_params", "active_params", "top_k", "final_eval_loss",
                 "mem_train_accuracy", "mem_accuracy", "reason_accuracy", "reason_task_loss",
                 "reason_sc_accuracy", "status")


def wilson_interval(accuracy: float, count: float, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of an accuracy over ``count`` evaluation items."""
  if not count or not np.isfinite(accuracy):
    return (float("nan"), float("nan"))
  centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
  half = z * math.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count))
  half /= 1 + z * z / count
  return (max(0.0, centre - half), min(1.0, centre + half))


def _cell(value: Any) -> str:
  if isinstance(value, (float, np.floating)):
    return "" if not np.isfinite(value) else f"{value:.4g}"
  if isinstance(value, (int, np.integer)) and abs(value) >= 10_000:
    return f"{value / 1e6:.2f}M"
  return str(value)


def markdown_table(df: pd.DataFrame, columns=TABLE_COLUMNS) -> str:
  columns = [c for c in columns if c in df.columns]
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for _, row in df.iterrows():
    lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
  return "\n".join(lines)


def accuracy_intervals(df: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
  """Per run, Wilson intervals of each accuracy that has an item count beside it."""
  out: dict[str, dict[str, list[float]]] = {}
  for _, row in df.iterrows():
    for metric, count_col in (("mem_train_accuracy", "mem_train_count"),
                              ("mem_accuracy", "mem_count"),
                              ("reason_accuracy", "reason_count")):
      if metric in row and count_col in row and pd.notna(row[metric]):
        out.setdefault(row["name"], {})[metric] = list(
            wilson_interval(float(row[metric]), float(row[count_col])))
  return out


def write(workdir: str, df: pd.DataFrame, verdicts: list[dict], figures: dict[str, dict],
          fits: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
  """Writes DIR/report.md and DIR/summary.json; returns the summary."""
  memorization = next(v for v in verdicts if v["finding"] == 2)
  summary = {
      "memorization_spearman_total_params": memorization["numbers"].get("mean_spearman"),
      "verdicts": verdicts, "fits": fits, "accuracy_intervals": accuracy_intervals(df),
      "runs": int(len(df)), "runs_done": int((df["status"] == "done").sum()), **extra,
  }
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=float)
  lines = ["# Optimal sparsity of MoE LMs: memorization vs reasoning (tiny reproduction)", "",
           f"Preset `{extra.get('preset')}`, {summary['runs_done']} of {summary['runs']} runs "
           f"done, wall time {extra.get('wall_time_s', float('nan')):.0f} s.", "",
           "## Findings (RESEARCH.md section 1)", ""]
  for v in verdicts:
    lines.append(f"{v['finding']}. **{v['verdict']}**: {v['statement']}")
  lines += ["", "## Fits", "", "```", json.dumps(fits, indent=2, default=float), "```", "",
            "## Figures", ""]
  for name, paths in figures.items():
    if "png" in paths:
      lines.append(f"![{name}]({os.path.relpath(paths['png'], workdir)})")
    else:
      lines.append(f"- {name}: skipped ({paths.get('skipped')})")
  lines += ["", "## Runs", "", markdown_table(df), "",
            "Accuracy intervals (95% Wilson, over evaluation items) are in summary.json."]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return summary
