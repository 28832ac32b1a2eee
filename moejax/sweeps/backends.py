"""Where a sweep's runs execute: in the driver, in N child processes, or as Ray tasks.

Every backend takes the runs to execute and two callbacks from the driver:
``on_start(task)`` when a run starts and ``on_done(task, row)`` with its result columns (see
execute.py). A run that crashes its worker (segfault, OOM kill, Ray worker death) is reported
as ``failed``; the other runs go on.

- ``inline``: sequentially in the driver process (no isolation; quickest for tiny runs).
- ``processes``: each run in a fresh spawned process, at most N at a time; its output goes to
  ``WORKDIR/logs/NAME.log``. A child exits when the driver dies.
- ``ray``: each run is a Ray task (``num_cpus`` CPUs plus optional custom resources, e.g.
  ``{"TPU": 4}`` for one TPU VM per run) in a fresh worker process. Workers must import moejax
  (install the package on every node) and see the sweep's workdir (a shared filesystem for
  multi-host clusters).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
from typing import Any, Callable, Mapping, Sequence

from moejax.sweeps import execute
from moejax.sweeps.spec import SweepRun


@dataclasses.dataclass(frozen=True)
class Task:
  """A run and where it writes: its run directory and (for child processes) its log file."""
  run: SweepRun
  run_dir: str
  log_path: str


OnStart = Callable[[Task], None]
OnDone = Callable[[Task, Mapping[str, Any]], None]


def run_inline(tasks: Sequence[Task], evaluate, on_start: OnStart, on_done: OnDone) -> None:
  """Runs the tasks one after the other in this process."""
  for task in tasks:
    on_start(task)
    on_done(task, execute.execute_run(task.run, task.run_dir, evaluate))


def run_processes(tasks: Sequence[Task], evaluate, on_start: OnStart, on_done: OnDone,
                  processes: int = 1) -> None:
  """Runs each task in a fresh spawned process, ``processes`` at a time."""
  ctx = multiprocessing.get_context("spawn")
  options = execute.jax_options()
  queue = list(tasks)
  active: dict[Any, tuple[Task, Any]] = {}  # result pipe -> (task, process)
  try:
    while queue or active:
      while queue and len(active) < processes:
        task = queue.pop(0)
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=execute.child_main, name=f"sweep:{task.run.name}",
                           args=(task.run, task.run_dir, evaluate, options, task.log_path,
                                 os.getpid(), writer))
        on_start(task)
        proc.start()
        writer.close()  # the child holds the only writer: its death means EOF here
        active[reader] = (task, proc)
      for reader in multiprocessing.connection.wait(list(active)):
        task, proc = active.pop(reader)
        try:
          row = reader.recv()
        except EOFError:
          proc.join()
          row = execute.failed_row(f"worker process exited with code {proc.exitcode} "
                                   f"(see {task.log_path})")
        reader.close()
        proc.join()
        on_done(task, row)
  finally:
    for _, proc in active.values():
      proc.terminate()
      proc.join()


def _ray_window(ray, num_cpus: float, resources: Mapping[str, float]) -> int:
  """How many tasks the cluster can run at once (tasks beyond that are not yet submitted, so
  the table's ``running`` rows are the ones actually running)."""
  available = ray.cluster_resources()
  needs = {"CPU": num_cpus, **resources}
  fits = [available.get(k, 0) // v for k, v in needs.items() if v > 0]
  return max(1, int(min(fits, default=1)))


def run_ray(tasks: Sequence[Task], evaluate, on_start: OnStart, on_done: OnDone,
            address: str | None = None, num_cpus: float = 1,
            resources: Mapping[str, float] | None = None,
            max_concurrent: int | None = None) -> None:
  """Runs each task as a Ray task; connects to ``address`` (or a running/new local cluster).

  A cluster this function starts is shut down at the end; one already initialised (e.g. by the
  caller) is left running.
  """
  import ray  # pylint: disable=import-outside-toplevel
  started_here = not ray.is_initialized()
  if started_here:
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
  resources = dict(resources or {})
  remote = ray.remote(num_cpus=num_cpus, resources=resources, max_calls=1,
                      max_retries=0)(execute.remote_main)
  window = max_concurrent or _ray_window(ray, num_cpus, resources)
  options = execute.jax_options()
  queue = list(tasks)
  active: dict[Any, Task] = {}
  try:
    while queue or active:
      while queue and len(active) < window:
        task = queue.pop(0)
        on_start(task)
        active[remote.remote(task.run, task.run_dir, evaluate, options)] = task
      ready, _ = ray.wait(list(active), num_returns=1)
      task = active.pop(ready[0])
      try:
        row = ray.get(ready[0])
      except Exception as e:  # pylint: disable=broad-except
        row = execute.failed_row(f"ray task failed: {execute.last_line(e)}")
      on_done(task, row)
  finally:
    for ref in active:
      ray.cancel(ref, force=True)
    if started_here:
      ray.shutdown()
