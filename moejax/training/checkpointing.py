"""Orbax checkpoints of the whole train state: periodic saves, keep-last-N, final save, and a
restore that survives a damaged checkpoint.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint intact; ``latest_step`` ignores partial ones.
A finalized step can still be damaged afterwards (a truncated copy, a full disk, a stray
write): ``restore_latest`` restores the newest step, and when orbax cannot read it back it warns
in one line naming the step, and tries the next older one. A damaged step is kept on disk for
inspection; a trainer that will save its step number again sets it aside
(``set_aside=True``: ``checkpoints/30`` becomes ``checkpoints/30.damaged``, a name orbax does not
treat as a step, so it is neither restored nor deleted by keep-last-N). When no step restores,
the error is one line (``CheckpointError``; experiments/cli.py prints it without a traceback).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

DAMAGED_SUFFIX = ".damaged"


class CheckpointError(RuntimeError):
  """Checkpoints exist but none can be restored."""


def make_manager(workdir: str, *, save_every: int, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Saves ``state`` as ``step`` when the interval says so (or ``force``)."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def _root_cause(error: BaseException) -> str:
  """The innermost cause's first line (orbax wraps tensorstore errors whose messages embed a
  multi-line spec), shortened to one readable line."""
  while error.__cause__ is not None:
    error = error.__cause__
  first = (str(error).strip().splitlines() or [""])[0]
  line = f"{type(error).__name__}: {first}"
  return line if len(line) <= 300 else line[:297] + "..."


def _from_abandoned_read(unraisable) -> bool:
  """Whether an unraisable exception comes from a read that a failed orbax restore left behind:
  one of orbax's read coroutines closed with its error, or a tensorstore callback that found
  orbax's event loop closed."""
  error, source = unraisable.exc_value, unraisable.object
  code = getattr(source, "cr_code", None)
  if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
    return True
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


class _AbandonedTaskFilter(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" for orbax's read tasks and gathers."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "exception was never retrieved" not in record.getMessage():
      return True
    tb = record.exc_info[2] if record.exc_info else None
    files = [frame.filename for frame in traceback.extract_tb(tb)] + [record.getMessage()]
    return not any(f"{os.sep}orbax{os.sep}" in name for name in files)


def _ignore_reads_left_behind() -> None:
  """Silences the reads a failed restore leaves in flight. When one array fails, orbax raises
  from its gather while the other reads are still pending; as they finish or are collected,
  Python reports each through ``sys.unraisablehook`` ("Exception ignored in: <coroutine
  _read_array_index_and_device_put>", "RuntimeError: Event loop is closed") or asyncio's logger
  ("Task exception was never retrieved"), thousands of traceback lines after the one-line
  warning. Only those are dropped; the hook stays for the
  process (the reads may finish after the fallback restore returned)."""
  previous = sys.unraisablehook
  if getattr(previous, "moejax_drops_abandoned_reads", False):
    return
  logging.getLogger("asyncio").addFilter(_AbandonedTaskFilter())

  def hook(unraisable):
    if not _from_abandoned_read(unraisable):
      previous(unraisable)

  hook.moejax_drops_abandoned_reads = True
  sys.unraisablehook = hook


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, *, set_aside: bool = False):
  """(step, state) of the newest checkpoint that restores, or (0, None) when there is none.

  Every step that fails gets a one-line warning (step, path, root cause). When an older step
  restores, ``set_aside`` renames the newer, failed steps' directories to ``<step>.damaged``
  (process 0; every process then reloads the step list), so that training can save those step
  numbers again. Raises ``CheckpointError`` (one line) when checkpoints exist and none restores;
  nothing is renamed then, so every retry fails the same way.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      damaged.append(step)
      _ignore_reads_left_behind()
      _warn(f"checkpoint step {step} of {manager.directory} cannot be restored "
            f"({_root_cause(e)})")
      continue
    if damaged:
      kept = [_set_aside(os.path.join(manager.directory, str(s))) if set_aside else str(s)
              for s in damaged]
      if set_aside:
        multihost_utils.sync_global_devices("moejax_checkpoint_set_aside")
        manager.reload()
      _warn(f"restored step {step}, the newest intact checkpoint; kept for inspection: "
            f"{', '.join(map(str, kept))}")
    return step, state
  if damaged:
    raise CheckpointError(f"no intact checkpoint under {manager.directory}: steps "
                          f"{', '.join(map(str, damaged))} all fail to restore")
  return 0, None


def _set_aside(source: str) -> str:
  """Renames a step directory to a free ``<step>.damaged[.N]`` name (process 0); returns it."""
  target, n = source + DAMAGED_SUFFIX, 1
  while os.path.exists(target):
    target, n = f"{source}{DAMAGED_SUFFIX}.{n}", n + 1
  if jax.process_index() == 0:
    os.rename(source, target)
  return target
