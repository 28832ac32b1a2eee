"""The results table of a sweep: one row per run, read by the fits and the figures.

``experiments/sweep.py`` records one row per run in a pandas-readable table (CSV, parquet or
SQLite) under the sweep's workdir. Columns (units in brackets):

Required
  name                 run name (str)
  d_model              model width
  num_experts          experts per MoE layer, E (1 for a dense model)
  top_k                experts per token, k
  total_params         all parameters, embeddings included [count]
  active_params        parameters used per token (router excluded) [count]
  train_tokens         training tokens [count]
  train_flops          training compute [FLOPs]
  sparsity             1 - k / E
  tpp                  tokens per parameter, train_tokens / total_params
  final_train_loss     last training loss [nats / token]
  train_loss_tail      mean training loss logged over the last 10% of steps [nats / token]
  final_eval_loss      held-out loss at the end [nats / token]
  seed                 training seed
  status               "done" for a finished run (see ``FINISHED_STATUSES``)

Per-suite evaluation (optional; a figure that needs a missing one is skipped)
  mem_task_loss, reason_task_loss           cross-entropy on the answer tokens [nats / token]
  mem_accuracy, reason_accuracy             accuracy on held-out items [fraction]
  mem_train_accuracy, reason_train_accuracy same metric on training-split items in evaluation
                                            format (for the train-test gap) [fraction]
  reason_sc{n}_accuracy                     majority vote over n sampled answers [fraction]
                                            (``sc_accuracy_columns``)

``sparsity`` and ``tpp`` are derived by ``add_derived_columns`` when absent.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = (
    "name", "d_model", "num_experts", "top_k", "total_params", "active_params",
    "train_tokens", "train_flops", "sparsity", "tpp", "final_train_loss", "final_eval_loss",
    "seed", "status")
SUITES = ("mem", "reason")
SUITE_METRICS = ("task_loss", "accuracy", "train_accuracy")
SUITE_COLUMNS = tuple(f"{s}_{m}" for s in SUITES for m in SUITE_METRICS)
# Status values of a finished run (case-insensitive); "done" is the one sweeps should write.
FINISHED_STATUSES = ("done", "finished", "completed", "complete", "ok", "success", "succeeded")
SQLITE_TABLE = "results"


class MissingColumnsError(ValueError):
  """A computation needs columns that the results table does not have."""

  def __init__(self, what: str, missing: Sequence[str]):
    super().__init__(f"{what}: the results table lacks column(s) {', '.join(missing)}")
    self.what = what
    self.missing = tuple(missing)


def missing_columns(df: pd.DataFrame, columns: Iterable[str]) -> list[str]:
  """Columns of ``columns`` absent from ``df`` or entirely empty."""
  return [c for c in columns if c not in df.columns or df[c].isna().all()]


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
  """Raises ``MissingColumnsError`` naming ``what`` if any column is missing."""
  missing = missing_columns(df, columns)
  if missing:
    raise MissingColumnsError(what, missing)


def sc_accuracy_columns(df: pd.DataFrame) -> dict[int, str]:
  """{n: "reason_sc{n}_accuracy"} for the self-consistency columns holding values, n sorted."""
  found = {}
  for column in df.columns:
    match = re.fullmatch(r"reason_sc(\d+)_accuracy", column)
    if match and df[column].notna().any():
      found[int(match.group(1))] = column
  return dict(sorted(found.items()))


def load_results(path: str | Path, table: str = SQLITE_TABLE) -> pd.DataFrame:
  """Reads a results table: .csv, .parquet/.pq, or SQLite (.sqlite/.db, table ``table``)."""
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix == ".csv":
    return pd.read_csv(path)
  if suffix in (".parquet", ".pq"):
    return pd.read_parquet(path)
  if suffix in (".sqlite", ".sqlite3", ".db"):
    with sqlite3.connect(path) as conn:
      return pd.read_sql_query(f'SELECT * FROM "{table}"', conn)
  raise ValueError(f"unknown results table format {suffix!r} (csv, parquet or sqlite)")


def add_derived_columns(df: pd.DataFrame) -> pd.DataFrame:
  """A copy with ``sparsity`` = 1 - k/E and ``tpp`` = tokens/params filled where absent."""
  out = df.copy()
  if "sparsity" not in out and {"top_k", "num_experts"} <= set(out.columns):
    out["sparsity"] = 1.0 - out["top_k"] / out["num_experts"]
  if "tpp" not in out and {"train_tokens", "total_params"} <= set(out.columns):
    out["tpp"] = out["train_tokens"] / out["total_params"]
  return out


def finished_runs(df: pd.DataFrame, loss_col: str = "final_eval_loss") -> pd.DataFrame:
  """Rows of finished runs (``FINISHED_STATUSES``) with a finite ``loss_col``."""
  keep = np.ones(len(df), dtype=bool)
  if "status" in df:
    keep &= df["status"].astype(str).str.lower().isin(FINISHED_STATUSES).to_numpy()
  if loss_col in df:
    keep &= np.isfinite(pd.to_numeric(df[loss_col], errors="coerce").to_numpy(np.float64))
  return df.loc[keep]
