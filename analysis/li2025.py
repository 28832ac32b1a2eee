"""Loaders for the public scaling-run tables of Li et al. 2025 ("(Mis)Fitting: A Survey of
Scaling Laws", arXiv 2502.18969; files from hadasah/scaling_laws, see the folder's README).

* Dense (scaling_results_last_ckpt_only.csv): 261 open_lm runs, 11 sizes, learning-rate
  sweeps. Columns used: N (parameters incl. embeddings), N_no_emb, D (tokens), loss.
* MoE (gshard.csv, spm.csv): tracker exports; a run's backbone size is in its name
  ("model-12m"); E is model.number_of_experts, top-2 routing; tokens = steps x 1,048,576.
  Rows with a missing loss are dropped. Runs that stopped before the end of their schedule
  (train/step < steps: their loss is a mid-schedule loss) are dropped by default.

Both loaders keep the best learning rate per cell by default, as the README asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import best_per_cell

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scaling_runs_li2025"
DENSE_FILE = "scaling_results_last_ckpt_only.csv"
MOE_FILES = {"gshard": "gshard.csv", "spm": "spm.csv"}
TOKENS_PER_STEP = 1_048_576
_MOE_LOSS_COLUMNS = {
    "train": "train/avg_loss_AVG",
    "c4": "eval/ppl//fsx-onellm/data/corpora/text_only/text_eval/c4.jsonl",
}


def load_dense(data_dir: str | Path = DEFAULT_DIR, best_lr: bool = True) -> pd.DataFrame:
  """Dense runs: columns N, N_no_emb, D, loss, peak_lr, model (best lr per (model, D))."""
  df = pd.read_csv(Path(data_dir) / DENSE_FILE)
  df = df[["model", "N", "N_no_emb", "D", "loss", "peak_lr"]].dropna(subset=["loss"])
  df = df.astype({"N": np.float64, "N_no_emb": np.float64, "D": np.float64})
  return best_per_cell(df, ["model", "D"], "loss") if best_lr else df.reset_index(drop=True)


def load_moe(router: str, data_dir: str | Path = DEFAULT_DIR, loss: str = "c4",
             best_lr: bool = True, finished_schedule_only: bool = True) -> pd.DataFrame:
  """MoE runs of one router ("gshard" or "spm").

  Args:
    router: which table.
    data_dir: folder of the tables.
    loss: "c4" (final C4 eval loss = ln of the logged C4 perplexity) or "train" (the
      tracker's final training loss summary).
    best_lr: keep the lowest-loss run per (size, E, D) cell, over learning rates and
      load-balance weights.
    finished_schedule_only: drop runs stopped before the end of their schedule.

  Returns:
    Columns: size (e.g. "12m"), N (nominal backbone parameters from the run name), E, D
    (tokens), loss, lr, steps.
  """
  raw = pd.read_csv(Path(data_dir) / MOE_FILES[router])
  loss_values = pd.to_numeric(raw[_MOE_LOSS_COLUMNS[loss]], errors="coerce")
  if loss == "c4":
    loss_values = np.log(loss_values)
  size = raw["Name"].str.extract(r"model-(\d+)m", expand=False)
  df = pd.DataFrame({
      "size": size + "m",
      "N": size.astype(np.float64) * 1e6,
      "E": raw["model.number_of_experts"].astype(np.float64),
      "D": raw["steps"].astype(np.float64) * TOKENS_PER_STEP,
      "loss": loss_values,
      "lr": raw["optim.lr"],
      "steps": raw["steps"],
      "steps_done": raw["train/step"],
  }).dropna(subset=["loss", "N"])
  if finished_schedule_only:
    df = df[df["steps_done"] >= df["steps"]]
  df = df.drop(columns="steps_done")
  return best_per_cell(df, ["size", "E", "D"], "loss") if best_lr else df.reset_index(drop=True)
