"""GRPO of a sweep's finished runs on the reasoning suite, evaluated like pre-training.

  metrics = posttrain_run(run_dir, cfg)    # one run: GRPO, then evaluate_suites; grpo_* metrics
  df = grpo_sweep(sweep_dir, cfg)          # every done run; grpo_* columns in results.sqlite

A run's post-training reads its ``config.json`` and newest checkpoint, samples completions of the
suite's reasoning *training* problems (reward 1 when ``scoring.is_correct``), and evaluates the
post-trained model with the run's ``config.eval`` settings (``LMTask.evaluate_suites``).
Results go to ``RUN_DIR/grpo.json``: ``{"config", "metrics", "history", "from_step"}``, with
every metric prefixed ``grpo_`` (``grpo_reason_accuracy``, ``grpo_reason_task_loss``,
``grpo_mem_train_accuracy``, ..., ``grpo_reward_start``, ``grpo_reward_end``, ``grpo_kl_end``).
A grpo.json written with the same GRPO config is reused, so re-running resumes; the model
itself is not saved.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from typing import Any

import ml_collections
import pandas as pd
from tqdm import tqdm

from moejax.data import layout
from moejax.data import records
from moejax.data import scoring
from moejax.data import suites
from moejax.data import tokenizer as tokenizer_lib
from moejax.evaluation import batching
from moejax.posttrain import grpo
from moejax.sweeps import results
from moejax.sweeps.execute import last_line
from moejax.sweeps.runner import run_dir as sweep_run_dir
from moejax.tasks.lm import LMTask
from moejax.training import task as task_lib
from moejax.training.logging import write_json
from moejax.training.restore import restore_run

GRPO_FILE = "grpo.json"
PREFIX = "grpo_"


def _cached_metrics(path: str, config_json: dict) -> dict[str, float] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  if saved.get("config") != config_json:
    logging.warning("%s was written with another GRPO config; post-training again", path)
    return None
  return saved["metrics"]


def _answer_bucket(tokens) -> int:
  """The longest reference answer (EOS included), rounded up to a power of two >= 8."""
  return batching.bucket_length(max(len(t.answer) for t in tokens), minimum=8)


def posttrain_run(run_dir: str, cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """GRPO metrics of the run in ``run_dir`` (computed, or read from its grpo.json)."""
  path = os.path.join(run_dir, GRPO_FILE)
  config_json = json.loads(cfg.to_json())
  cached = _cached_metrics(path, config_json)
  if cached is not None:
    return cached
  start = time.time()
  run = restore_run(run_dir)
  data = run.config.data
  if data.source != "suites":
    raise ValueError(f"GRPO needs a run trained on the data suites, not {data.source!r}")
  tokenizer = tokenizer_lib.load_tokenizer(data.data_dir or layout.default_data_dir(),
                                           data.preset)
  items = suites.examples(data.preset, "reasoning", records.TRAIN)
  tokens = batching.tokenize_items(tokenizer, items)

  def reward(i: int, ids) -> float:
    return float(scoring.is_correct(items[i], tokenizer.decode(ids)))

  with run.context():
    params, history = grpo.train_grpo(
        run.graphdef, run.state.params, run.state.model_state, [t.prompt for t in tokens],
        reward, cfg, max_new_tokens=cfg.max_new_tokens or _answer_bucket(tokens),
        vocab_limit=tokenizer.vocab_size, aux_weights=task_lib.aux_loss_weights(run.config),
        step_offset=run.step, progress=cfg.progress_bar)
    evaluated = LMTask().evaluate_suites(run.config, run.graphdef,
                                         run.state.replace(params=params))
  metrics = {**evaluated, **grpo.summarize(history, cfg.reward_window),
             "wall_time_s": time.time() - start}
  metrics = {PREFIX + name: float(value) for name, value in metrics.items()}
  write_json(path, {"config": config_json, "metrics": metrics, "history": history,
                    "from_step": run.step})
  return metrics


def grpo_sweep(sweep_dir: str, cfg: ml_collections.ConfigDict,
               progress: bool = True) -> pd.DataFrame:
  """Post-trains every done run of the sweep in ``sweep_dir``; returns the results table.

  A run whose post-training fails gets its error in ``grpo_error`` (the others go on).
  """
  df = results.read_table(sweep_dir)
  names = list(df.loc[df["status"] == results.DONE, "name"])
  with results.ResultsTable(sweep_dir) as table:
    for name in tqdm(names, desc="grpo runs", unit="run", disable=not progress):
      try:
        row: dict[str, Any] = {**posttrain_run(sweep_run_dir(sweep_dir, name), cfg),
                               "grpo_error": None}
      except Exception as e:  # pylint: disable=broad-except  (recorded, not fatal)
        traceback.print_exc()
        row = {"grpo_error": last_line(e)}
      table.upsert(name, row)
  return results.read_table(sweep_dir)


def grpo_summary(df: pd.DataFrame) -> dict[str, dict[str, float]]:
  """Per run: reasoning accuracy before GRPO and every ``grpo_`` column (for summary.json)."""
  columns = [c for c in df.columns if c.startswith(PREFIX) or c == "reason_accuracy"]
  if not any(c.startswith(PREFIX) for c in columns):
    return {}
  return {row["name"]: {c: row[c] for c in columns if pd.notna(row[c])}
          for _, row in df.iterrows()}
