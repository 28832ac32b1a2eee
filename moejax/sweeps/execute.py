"""One run of a sweep: train, classify the outcome, evaluate; always returns result columns.

``execute_run`` never raises for a failed run: a non-finite loss (``FloatingPointError`` from the
trainer) gives status ``diverged`` with ``diverged_step``; a finite loss that ends above the
first logged loss (training made the model worse than at initialisation) is also ``diverged``;
any other exception gives ``failed`` with the error's last line in ``error`` (the traceback
goes to the run's log). The same function runs in the driver, in a child process or in a Ray
task; the driver alone writes the results table.

Evaluation hook: ``evaluate(run: SweepRun, run_dir: str) -> dict[str, float]``, called after a
successful training; its keys become table columns (e.g. ``mem_accuracy``). It may be given as
a callable or as a ``file.py:function`` / ``package.module:function`` string, resolved where
the run executes.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from moejax.host_memory import keep_freed_host_memory
from moejax.sweeps import results
from moejax.sweeps.spec import SweepRun, load_callable

EvalHook = Callable[[SweepRun, str], Mapping[str, float]]
_STEP_RE = re.compile(r"at step (\d+)")
# jax.config options the driver hands to child processes and Ray tasks (e.g. the XLA cache).
FORWARDED_JAX_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def last_line(error: BaseException) -> str:
  """``Type: last line of the message`` (config_flags and XLA errors span many lines)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def finite_divergence_step(losses: Mapping[int, float]) -> int | None:
  """The step after which the loss stayed above the first logged loss, if it ends there.

  ``losses`` maps logged steps to training losses. A run whose last loss exceeds its first one
  (about ln(vocab) at initialisation) has diverged even if the loss stayed finite.
  """
  steps = sorted(losses)
  if len(steps) < 2 or not losses[steps[-1]] > losses[steps[0]]:
    return None
  step = steps[-1]
  for s in reversed(steps[1:]):
    if not losses[s] > losses[steps[0]]:
      break
    step = s
  return step


def _logged_losses(run_dir: str) -> dict[int, float]:
  from moejax.training.logging import read_jsonl  # pylint: disable=import-outside-toplevel
  return {row["step"]: row["loss"] for row in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))}


def _train_columns(results_dict: Mapping[str, Any]) -> dict[str, Any]:
  return {"final_train_loss": results_dict["final_train_loss"],
          "train_loss_tail": results_dict.get("train_loss_tail"),
          "final_eval_loss": results_dict["eval_loss"],
          "eval_perplexity": results_dict.get("eval_perplexity"),
          "tokens_per_s": results_dict.get("tokens_per_s"),
          "resumed_from_step": results_dict.get("resumed_from_step")}


def _train(run: SweepRun, run_dir: str) -> dict[str, Any]:
  """Training's result columns: done (with losses), diverged or failed."""
  from moejax.training.trainer import train  # pylint: disable=import-outside-toplevel
  try:
    row = {"status": results.DONE, **_train_columns(train(run.config, run_dir))}
  except FloatingPointError as e:  # the trainer's non-finite loss
    match = _STEP_RE.search(str(e))
    return {"status": results.DIVERGED, "error": last_line(e),
            "diverged_step": int(match.group(1)) if match else None}
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {"status": results.FAILED, "error": f"training: {last_line(e)}"}
  step = finite_divergence_step(_logged_losses(run_dir))
  if step is not None:
    row.update(status=results.DIVERGED, diverged_step=step,
               error=f"loss rose above its initial value from step {step}")
  return row


def _evaluate(run: SweepRun, run_dir: str, evaluate: EvalHook | str) -> dict[str, Any]:
  """The hook's metrics as columns (``name`` and ``status`` are reserved), or a failure."""
  try:
    hook = load_callable(evaluate) if isinstance(evaluate, str) else evaluate
    return {k: v for k, v in dict(hook(run, run_dir)).items() if k not in ("name", "status")}
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {"status": results.FAILED, "error": f"evaluation: {last_line(e)}"}


def execute_run(run: SweepRun, run_dir: str, evaluate: EvalHook | str | None = None
                ) -> dict[str, Any]:
  """Trains (or resumes) ``run`` in ``run_dir``, evaluates it; returns its result columns."""
  start = time.time()
  row: dict[str, Any] = {"error": None, "diverged_step": None, **_train(run, run_dir)}
  if row["status"] == results.DONE and evaluate is not None:
    row.update(_evaluate(run, run_dir, evaluate))
  row["wall_time_s"] = time.time() - start
  return row


def failed_row(error: str) -> dict[str, Any]:
  """Result columns of a run whose worker died without reporting."""
  return {"status": results.FAILED, "error": error}


def jax_options() -> dict[str, Any]:
  """The driver's values of ``FORWARDED_JAX_OPTIONS`` (empty if JAX is not imported)."""
  if "jax" not in sys.modules:
    return {}
  import jax  # pylint: disable=import-outside-toplevel
  values = {name: getattr(jax.config, name) for name in FORWARDED_JAX_OPTIONS}
  return {name: value for name, value in values.items() if value is not None}


def apply_jax_options(options: Mapping[str, Any]) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  for name, value in options.items():
    jax.config.update(name, value)


def _exit_when_orphaned(parent_pid: int, interval_s: float = 1.0) -> None:
  """Ends this process when its parent (the sweep driver) is gone: a killed sweep must not leave
  trainers that would race the re-run on the same run directory."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(interval_s)
    os._exit(3)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True).start()


def child_main(run: SweepRun, run_dir: str, evaluate: EvalHook | str | None,
               options: Mapping[str, Any], log_path: str, parent_pid: int, conn) -> None:
  """Entry point of a child process: output to ``log_path``, result sent over ``conn``."""
  _exit_when_orphaned(parent_pid)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, "a", buffering=1) as log:
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    print(f"[sweep] {run.name}: pid {os.getpid()} started", flush=True)
    keep_freed_host_memory()
    apply_jax_options(options)
    row = execute_run(run, run_dir, evaluate)
    print(f"[sweep] {run.name}: {row['status']} {row.get('error') or ''}", flush=True)
    sys.stderr.flush()
  conn.send(row)
  conn.close()
  # The result is delivered; leftover library threads (e.g. an async save interrupted by a NaN)
  # get a minute to finish, then must not keep the process alive.
  _exit_after(60.0)


def _exit_after(seconds: float) -> None:
  def stop():
    time.sleep(seconds)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=stop, daemon=True).start()


def remote_main(run: SweepRun, run_dir: str, evaluate: EvalHook | str | None,
                options: Mapping[str, Any]) -> dict[str, Any]:
  """Entry point of a Ray task (the worker's output goes to Ray's logs)."""
  keep_freed_host_memory()
  apply_jax_options(options)
  return execute_run(run, run_dir, evaluate)
