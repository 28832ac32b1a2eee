"""Train one model: ``python -m experiments.train --config=configs/lm_moe.py:tiny --workdir=DIR``.

Overrides: ``--config.model.num_experts=16`` etc. Re-running on the same workdir resumes.
"""

import json

from absl import app, flags

from experiments import cli
from experiments.flags import CONFIG
from moejax.training.trainer import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).",
                               required=True)


def main(argv):
  del argv
  results = cli.run_or_exit(lambda: train(CONFIG.value, _WORKDIR.value))
  print(json.dumps({k: v for k, v in results.items() if k != "params_by_component"}))


if __name__ == "__main__":
  cli.run(main)
