"""Run by test_sharding.py in a subprocess with 8 fake CPU devices (XLA_FLAGS set by the test).

Trains the smoke config on a (data=4, fsdp=2) mesh into argv[1] and prints one JSON line with
the device count and the shardings of a few parameters.
"""

import json
import sys

import jax

from configs import lm_moe
from moejax import sharding
from moejax.training.optimizer import make_optimizer
from moejax.training.state import init_train_state
from moejax.training.trainer import train
from tests.test_sharding import multi_device_config


def main(workdir: str):
  config = multi_device_config(lm_moe.get_config("smoke"), data=4, fsdp=2)
  train(config, workdir)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  tx, _ = make_optimizer(config.optim, config.train.steps)
  with sharding.use_rules(config.sharding_rules):
    state, _ = init_train_state(config, tx, mesh)
  specs = {
      "embedding": list(state.params["embed"]["embedding_VD"][...].sharding.spec),
      "experts": list(state.params["trunk"]["stages"][0]["blocks"][0]["ffn"]["experts"][
          "w_gate_EDF"][...].sharding.spec),
  }
  print(json.dumps({"devices": jax.device_count(), "specs": specs}))


if __name__ == "__main__":
  main(sys.argv[1])
