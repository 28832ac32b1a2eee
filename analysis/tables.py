"""Row selection shared by the CLI, the real-table loaders and the notebook."""

from __future__ import annotations

from typing import Sequence

import pandas as pd


def best_per_cell(df: pd.DataFrame, cell_cols: Sequence[str], loss_col: str) -> pd.DataFrame:
  """The lowest-loss row of every cell (e.g. the best learning rate per (N, D)).

  Scaling laws describe the loss of well-tuned runs; a learning-rate sweep contributes its
  best run, not all of them (the practice of the Li et al. 2025 tables' README).
  """
  clean = df.dropna(subset=[loss_col])
  idx = clean.groupby(list(cell_cols), sort=True)[loss_col].idxmin()
  return clean.loc[idx.to_numpy()].reset_index(drop=True)


def drop_highest_loss(df: pd.DataFrame, loss_col: str, k: int) -> pd.DataFrame:
  """``df`` without its ``k`` highest-loss rows (a sensitivity check on outlying runs)."""
  if k < 0:
    raise ValueError("k must be >= 0")
  if k == 0:
    return df
  if k >= len(df):
    raise ValueError(f"cannot drop {k} of {len(df)} rows")
  return df.drop(index=df[loss_col].nlargest(k).index)
