"""The training loop: validate, build (sharded), resume, train, checkpoint, evaluate, report.

The loop knows no model family: the run config's task (training/task.py) builds the model, its
loss, its batches, its evaluation and its counts.

Outputs in the workdir (the contract that sweeps and analysis read): config.json,
metrics.jsonl, checkpoints/ (orbax), tensorboard/, eval.json, and eval_items.npz (per-item
results for intervals over items, when the task writes them: the LM's suite evaluation, the
ViT's test images). Re-running the same command on the same
workdir resumes from the last checkpoint and reproduces the uninterrupted run's per-step losses
exactly (same machine).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from moejax import sharding, validation
from moejax.training import checkpointing, task as task_lib, workdir as workdir_lib
from moejax.training.logging import MetricsWriter, write_json
from moejax.training.state import abstract_like, init_train_state, model_graphdef
from moejax.training.step import build_train_step, make_eval_step


def _process_local(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a global batch (process p owns a contiguous block of rows)."""
  count, index = jax.process_count(), jax.process_index()
  rows = next(iter(batch.values())).shape[0] // count
  return {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}


def _to_device(batch: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
  """The task's batch fields (the keys of ``batch_sharding``) as global arrays."""
  local = _process_local({k: batch[k] for k in batch_sharding})
  return {k: jax.make_array_from_process_local_data(batch_sharding[k], v)
          for k, v in local.items()}


def evaluate(eval_step, state, source, batch_sharding, num_batches: int) -> float:
  """Mean cross-entropy over ``num_batches`` batches of a held-out source."""
  losses = [eval_step(state, _to_device(source.batch(i), batch_sharding))
            for i in range(num_batches)]
  return float(np.mean(jax.device_get(losses)))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run of ``config`` in ``workdir`` and returns the eval.json dict."""
  mesh_sizes = validation.validate_run(config, jax.device_count())
  task = task_lib.get(config)
  source = task.make_source(config, "train")
  eval_source = task.make_source(config, "eval")
  is_lead = jax.process_index() == 0
  resuming = workdir_lib.prepare(workdir, config) if is_lead else True

  mesh = sharding.make_mesh(mesh_sizes)
  graphdef = model_graphdef(config)
  train_step, tx, _ = build_train_step(config, graphdef)
  with sharding.use_rules(config.sharding_rules):
    state, state_shardings = init_train_state(config, tx, mesh)
  with sharding.use_rules(config.sharding_rules), jax.set_mesh(mesh):
    batch_sharding = sharding.batch_shardings(task.batch_spec(config), mesh)
    train_step = jax.jit(train_step, donate_argnums=0,
                         in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, None))
    eval_step = jax.jit(make_eval_step(graphdef, task.loss),
                        in_shardings=(state_shardings, batch_sharding))
    manager = checkpointing.make_manager(workdir, save_every=config.train.checkpoint_every,
                                         keep=config.train.keep_checkpoints)
    start, restored = checkpointing.restore_latest(manager, abstract_like(state, state_shardings),
                                                   set_aside=True)
    if restored is not None:
      state = restored
    writer = MetricsWriter(workdir, resume_step=start, enabled=is_lead)
    holder = {"state": state}
    try:
      final_loss = _run_steps(config, holder, train_step, source, batch_sharding, manager,
                              writer, start, task.tokens_per_batch(config))
      if manager.latest_step() != config.train.steps:
        checkpointing.save(manager, config.train.steps, holder["state"], force=True)
    finally:  # also on divergence: finish pending saves and close the files
      manager.wait_until_finished()
      manager.close()
      writer.close()
    state = holder["state"]
    eval_loss = evaluate(eval_step, state, eval_source, batch_sharding, config.train.eval_batches)
    task_metrics = task.evaluate(config, graphdef, state, eval_loss=eval_loss,
                                 items_dir=workdir if is_lead else None)

  results = {**task.counts(config), "eval_loss": eval_loss, "final_train_loss": final_loss,
             "steps": config.train.steps, "resumed_from_step": start, **task_metrics}
  if hasattr(source, "entropy_floor"):
    results["entropy_floor"] = source.entropy_floor()
  results.update(_logged_summary(workdir, config.train.steps))
  if is_lead:
    write_json(os.path.join(workdir, "eval.json"), results)
  return results


def _run_steps(config, holder, train_step, source, batch_sharding, manager, writer, start,
               tokens_per_step):
  """Steps ``start .. steps-1``; metrics are fetched one step late so the host never stalls
  the device queue. Returns the last logged training loss."""
  total = config.train.steps
  bar = tqdm(total=total, initial=start, desc="train", unit="step",
             disable=not config.train.progress_bar or jax.process_index() != 0)
  pending, last_loss = None, float("nan")
  interval_start, interval_steps = time.perf_counter(), 0
  for step in range(start, total):
    batch = _to_device(source.batch(step), batch_sharding)
    holder["state"], metrics = train_step(holder["state"], batch)
    interval_steps += 1
    if pending is not None:
      last_loss = _log(writer, bar, *pending)
      pending = None
    if (step + 1) % config.train.log_every == 0 or step + 1 == total:
      elapsed = time.perf_counter() - interval_start
      pending = (step + 1, metrics, interval_steps * tokens_per_step / max(elapsed, 1e-9))
      interval_start, interval_steps = time.perf_counter(), 0
    checkpointing.save(manager, step + 1, holder["state"])
    bar.update(1)
  if pending is not None:
    last_loss = _log(writer, bar, *pending)
  bar.close()
  return last_loss


def _log(writer, bar, step, metrics, tokens_per_s) -> float:
  row = writer.write(step, {**jax.device_get(metrics), "tokens_per_s": tokens_per_s})
  bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
  if not np.isfinite(row["loss"]):
    raise FloatingPointError(f"loss became {row['loss']} at step {step}")
  return row["loss"]


def _logged_summary(workdir: str, steps: int) -> dict:
  """From metrics.jsonl: the median tokens/s (the first interval includes compilation and is
  skipped) and ``train_loss_tail``, the mean training loss logged over the last 10% of steps
  (one logged batch is a noisy sample of the training loss)."""
  from moejax.training.logging import read_jsonl  # pylint: disable=import-outside-toplevel
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  out = {}
  rates = [row["tokens_per_s"] for row in rows][1:] or [row["tokens_per_s"] for row in rows]
  if rates:
    out["tokens_per_s"] = float(np.median(rates))
  tail = [row["loss"] for row in rows if row["step"] > 0.9 * steps] or [
      row["loss"] for row in rows[-1:]]
  if tail:
    out["train_loss_tail"] = float(np.mean(tail))
  return out
