"""Run by test_expert_parallel.py in a subprocess with 8 fake CPU devices: the LM smoke preset
trained on several meshes (argv[2]: JSON list of {"name", "mesh", "moe"}, optionally "train") into argv[1]/<name>;
prints one JSON line per run with its per-step losses."""

import json
import os
import sys

from moejax.training.logging import read_jsonl
from moejax.training.trainer import train
from tests.test_expert_parallel import equivalence_config


def main(root: str, cases: str):
  for case in json.loads(cases):
    workdir = os.path.join(root, case["name"])
    train(equivalence_config(case["mesh"], case["moe"], case.get("train")), workdir)
    losses = [row["loss"] for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    print(json.dumps({**case, "losses": losses}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
