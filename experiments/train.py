"""Train one model: ``python -m experiments.train --config=configs/lm_moe.py:tiny --workdir=DIR``.

Overrides: ``--config.model.moe.num_experts=16`` etc. Re-running on the same workdir resumes.
Multi-host: start one process per host with ``--coordinator=HOST:PORT --num_processes=N
--process_id=I`` (on TPU pods ``jax.distributed.initialize()`` needs no flags: pass
``--distributed``).
"""

import json

from absl import flags

from experiments import cli
from experiments.flags import CONFIG
from moejax.training.trainer import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).",
                               required=True)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (auto-detected cluster).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout_s", 100, "Multi-host: seconds without a heartbeat from a process after which "
    "the others exit with an error naming it (not a hang).")


def main(argv):
  del argv
  if _COORDINATOR.value or _DISTRIBUTED.value:
    cli.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               _PEER_TIMEOUT.value)
  results = cli.run_or_exit(lambda: train(CONFIG.value, _WORKDIR.value))
  print(json.dumps({k: v for k, v in results.items() if k != "params_by_component"}))


if __name__ == "__main__":
  cli.run(main)
