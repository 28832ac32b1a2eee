"""The results table of a sweep: ``WORKDIR/results.sqlite``, table ``results``, one row per run.

SQLite in WAL mode: every change is committed at once (a killed sweep loses nothing already
recorded) and readers (analysis, notebooks) can read while the sweep writes. Columns are added
on the fly, so an evaluation hook may return any metric names. Column names follow
``analysis/results_schema.py`` (name, d_model, num_experts, top_k, total_params, active_params,
train_tokens, train_flops, sparsity, tpp, final_train_loss, final_eval_loss, seed, status, ...).

Statuses: ``pending`` (planned), ``running`` (started; a killed sweep leaves it so),
``done``, ``diverged`` (``diverged_step`` says where), ``failed`` (``error`` says why).

  df = read_table(WORKDIR)   # pandas.DataFrame, flat columns
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

FILENAME = "results.sqlite"
TABLE = "results"
PENDING, RUNNING, DONE, DIVERGED, FAILED = "pending", "running", "done", "diverged", "failed"
# Leading columns of read_table, in this order (the rest follow in creation order).
LEADING_COLUMNS = (
    "name", "status", "family", "d_model", "num_experts", "top_k", "total_params",
    "active_params", "train_tokens", "train_flops", "sparsity", "tpp", "final_train_loss",
    "final_eval_loss", "seed", "diverged_step", "error")
_INT64_MAX = 2**63 - 1


def table_path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def _quote(column: str) -> str:
  if '"' in column or not column:
    raise ValueError(f"bad column name {column!r}")
  return f'"{column}"'


def _sql_value(value: Any) -> Any:
  """A value SQLite stores: numpy scalars unwrapped, huge ints as floats, containers as JSON."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, int) and abs(value) > _INT64_MAX:
    return float(value)
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, (dict, list, tuple)):
    return json.dumps(value, sort_keys=True)
  return value


def _sql_type(value: Any) -> str:
  """A new column's type from the first value stored in it (a NaN is a float)."""
  if isinstance(value, (float, np.floating)):
    return "REAL"
  return {int: "INTEGER", float: "REAL", str: "TEXT"}.get(type(_sql_value(value)), "")


class ResultsTable:
  """Read-write access to a sweep's results table (one writer: the sweep driver)."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = table_path(workdir)
    self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
    self._conn.execute("PRAGMA journal_mode=WAL")
    self._conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                       "(name TEXT PRIMARY KEY, status TEXT, updated_at REAL)")

  def close(self) -> None:
    self._conn.close()

  def __enter__(self) -> "ResultsTable":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def columns(self) -> list[str]:
    return [row[1] for row in self._conn.execute(f"PRAGMA table_info({TABLE})")]

  def _add_columns(self, row: Mapping[str, Any]) -> None:
    existing = {c.lower() for c in self.columns()}  # SQLite names ignore case
    for column, value in row.items():
      if column.lower() not in existing:
        self._conn.execute(
            f"ALTER TABLE {TABLE} ADD COLUMN {_quote(column)} {_sql_type(value)}".rstrip())

  def upsert(self, name: str, row: Mapping[str, Any], *, keep_status: bool = False) -> None:
    """Inserts or updates the row of ``name`` with ``row``'s columns (others are kept).

    With ``keep_status``, an existing row's status is left alone (a new row gets ``row``'s).
    """
    row = {**row, "name": name, "updated_at": time.time()}
    self._add_columns(row)
    columns = list(row)
    updated = [c for c in columns if c != "name" and not (keep_status and c == "status")]
    sql = (f"INSERT INTO {TABLE} ({', '.join(map(_quote, columns))}) "
           f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT(name) DO UPDATE SET "
           + ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in updated))
    self._conn.execute(sql, [_sql_value(row[c]) for c in columns])

  def statuses(self) -> dict[str, str]:
    """``{name: status}`` of every recorded run."""
    return dict(self._conn.execute(f"SELECT name, status FROM {TABLE}"))

  def get(self, name: str) -> dict[str, Any] | None:
    """The row of ``name`` as a dict, or None."""
    cursor = self._conn.execute(f"SELECT * FROM {TABLE} WHERE name = ?", (name,))
    values = cursor.fetchone()
    return None if values is None else dict(zip([d[0] for d in cursor.description], values))


def read_table(workdir: str) -> pd.DataFrame:
  """The results table of the sweep in ``workdir`` as a DataFrame (one row per run).

  Schema columns come first; NaN is stored (and read back) as missing.
  """
  path = table_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no results table at {path}")
  with sqlite3.connect(path, timeout=60) as conn:
    df = pd.read_sql_query(f"SELECT * FROM {TABLE} ORDER BY rowid", conn)
    declared = {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
  for column in df.columns:  # numbers with missing values (NULL) may come back as objects
    values = df[column].dropna()
    if df[column].dtype == object and (
        declared.get(column) in ("REAL", "INTEGER")
        or (len(values) and values.map(lambda v: isinstance(v, (int, float))).all())):
      df[column] = pd.to_numeric(df[column], errors="coerce")
  leading = [c for c in LEADING_COLUMNS if c in df.columns]
  return df[leading + [c for c in df.columns if c not in leading]]
