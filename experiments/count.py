"""Exact parameter and FLOP counts of a run config, without building the model.

  python -m experiments.count --config=configs/lm_moe.py:paper --config.model.d_model=1024 \
      --config.model.moe.num_experts=64 --config.model.moe.top_k=8

Prints one JSON line: the study's run name, total and active parameters, training FLOPs per
token and per run, and the parameters by component.
"""

import json

from experiments import cli
from experiments.flags import CONFIG
from moejax import validation
from moejax.training import task as tasks


def main(argv):
  del argv
  config = CONFIG.value
  cli.run_or_exit(lambda: validation.validate_config(config))
  print(json.dumps(tasks.get(config).counts(config)))


if __name__ == "__main__":
  cli.run(main)
