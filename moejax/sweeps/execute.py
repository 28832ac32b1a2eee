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

from moejax.sweeps import results
from moejax.sweeps.spec import SweepRun, load_callable

EvalHook = Callable[[SweepRun, str], Mapping[str, float]]
_STEP_RE = re.compile(r"at step (\d+)")
# jax.config options the driver hands to child processes and Ray tasks (e.g. the XLA cache).
FORWARDED_JAX_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def last_line(error: BaseException) -> str:
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
          "final_eval_loss": results_dict["eval_loss"],
          "eval_perplexity": results_dict.get("eval_perplexity"),
          "tokens_per_s": results_dict.get("tokens_per_s"),
          "resumed_from_step": results_dict.get("resumed_from_step")}


def execute_run(run: SweepRun, run_dir: str, evaluate: EvalHook | str | None = None
                ) -> dict[str, Any]:
  """Trains (or resumes) ``run`` in ``run_dir``, evaluates it; returns its result columns."""
  from moejax.training.trainer import train  # pylint: disable=import-outside-toplevel
  start = time.time()
  row: dict[str, Any] = {"status": results.DONE, "error": None, "diverged_step": None}
  stage = "training"
  try:
    row.update(_train_columns(train(run.config, run_dir)))
    step = finite_divergence_step(_logged_losses(run_dir))
    if step is not None:
      row.update(status=results.DIVERGED, diverged_step=step,
                 error=f"loss rose above its initial value from step {step}")
    elif evaluate is not None:
      stage = "evaluation"
      hook = load_callable(evaluate) if isinstance(evaluate, str) else evaluate
      row.update({k: v for k, v in dict(hook(run, run_dir)).items()
                  if k not in ("name", "status")})
  except FloatingPointError as e:
    match = _STEP_RE.search(str(e))
    row.update(status=results.DIVERGED, error=last_line(e),
               diverged_step=int(match.group(1)) if match else None)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    row.update(status=results.FAILED, error=f"{stage}: {last_line(e)}")
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
    apply_jax_options(options)
    row = execute_run(run, run_dir, evaluate)
    print(f"[sweep] {run.name}: {row['status']} {row.get('error') or ''}", flush=True)
  conn.send(row)
  conn.close()


def remote_main(run: SweepRun, run_dir: str, evaluate: EvalHook | str | None,
                options: Mapping[str, Any]) -> dict[str, Any]:
  """Entry point of a Ray task (the worker's output goes to Ray's logs)."""
  apply_jax_options(options)
  return execute_run(run, run_dir, evaluate)
