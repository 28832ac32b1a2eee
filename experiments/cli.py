"""absl entry-point helpers: config errors end the program with one clear line, no traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

import jax
from absl import app, flags, logging

from moejax.host_memory import keep_freed_host_memory
from moejax.training.checkpointing import CheckpointError
from moejax.validation import ConfigError

T = TypeVar("T")


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # config_flags embeds the config file's traceback in its message: keep its last line.
    reason = [line for line in str(e).splitlines() if line.strip()][-1:] or [repr(e)]
    reason = reason[0].strip()
    if isinstance(e, (AttributeError, KeyError)):
      reason = f"unknown config field {reason}"
    overrides = [a for a in argv[1:] if a.startswith("--config")]
    sys.exit(f"error: bad flag or config: {reason}; arguments: {' '.join(overrides)}")


def enable_compilation_cache() -> None:
  """Persists XLA executables across processes (CPU compiles take seconds per program)."""
  cache_dir = os.environ.get("MOEJAX_COMPILATION_CACHE",
                             os.path.join(os.path.expanduser("~"), ".cache", "moejax", "xla"))
  if cache_dir and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(main: Callable[[list[str]], None]) -> None:
  """``app.run`` with flag and config-override errors reported in one line, quiet library
  logging (orbax logs every save at INFO), the persistent compilation cache and the host
  allocator setting (moejax/host_memory.py: freed XLA:CPU buffers are reused, not re-mapped)."""

  def wrapped(argv):
    keep_freed_host_memory()
    logging.set_verbosity(logging.WARNING)
    enable_compilation_cache()
    return main(argv)

  app.run(wrapped, flags_parser=_parse_flags)


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None, peer_timeout_s: int = 100) -> None:
  """Joins a multi-process run (before any JAX computation). CPU collectives use gloo (loopback
  tests, CPU clusters); the setting does not affect TPU or GPU backends. A process that stops
  sending heartbeats for ``peer_timeout_s`` seconds (killed, hung, its host gone) makes the
  others exit with JAX's "tasks are unhealthy (stopped sending heartbeats)" error naming it,
  instead of waiting forever in a collective."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=peer_timeout_s)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=peer_timeout_s)


def run_or_exit(fn: Callable[[], T]) -> T:
  """Runs ``fn``; a ConfigError exits with status 2 and its message, a CheckpointError (no
  checkpoint of the workdir restores) with status 1 and its message."""
  try:
    return fn()
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except CheckpointError as e:
    print(f"checkpoint error: {e}", file=sys.stderr)
    sys.exit(1)


def run_image_study(run_study: Callable[..., T]) -> Callable[[], T]:
  """Defines the flags of a tiny image-study entry point (--preset tiny|smoke, --workdir,
  --processes, --override) and returns a function of no arguments that runs ``run_study`` with
  them (config errors end in one line, as ``run_or_exit``)."""
  preset = flags.DEFINE_enum("preset", "tiny", ["tiny", "smoke"], "Sweep preset.")
  workdir = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
  processes = flags.DEFINE_integer("processes", 2, "Runs trained at a time (child processes).")
  override = flags.DEFINE_multi_string("override", [], "Per-run config override, a.b=value.")
  return lambda: run_or_exit(lambda: run_study(
      workdir.value, preset=preset.value, processes=processes.value,
      overrides=tuple(override.value)))
