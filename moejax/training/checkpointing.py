"""Orbax checkpoints of the whole train state: periodic saves, keep-last-N, final save.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint intact; ``latest_step`` ignores partial ones.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


def make_manager(workdir: str, *, save_every: int, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Saves ``state`` as ``step`` when the interval says so (or ``force``)."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(step, state) of the newest complete checkpoint, or (0, None) when there is none."""
  step = manager.latest_step()
  if step is None:
    return 0, None
  return step, manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
