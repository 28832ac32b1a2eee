"""Per-chip memory of the LM train step compiled ahead of time for a TPU topology, MoE against
its dense counterpart, on several meshes (docs/parallelism.md).

Needs libtpu (``pip install jax[tpu]==<the installed jax>``, or a target dir on PYTHONPATH):

  PYTHONPATH=/tmp/libtpu_pkg python -m benchmarks.ep_memory --topology=v5p:2x2x2 \
      --batch=64 --meshes='{"fsdp": 8}' '{"expert": 8}'

Prints a table (GiB per chip: arguments, temporaries) and one JSON line of the rows.
"""

from __future__ import annotations

import argparse
import json

import jax
from jax.experimental import topologies

from configs import lm_moe
from moejax import sharding
from moejax.training.compile import compile_train_step

GIB = 2 ** 30


def paper_config(batch: int, seq: int, moe: bool, **model):
  config = lm_moe.get_config("paper")
  config.model.update(dtype="bfloat16", remat="full", **model)
  config.model.moe.ep_exchange = "ragged"
  if not moe:
    config.model.moe_every = 0
  config.data.update(batch_size=batch, seq_len=seq)
  return config


def measure(config, mesh_sizes: dict, devices) -> dict:
  sizes = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1, **mesh_sizes}
  config.mesh.update(sizes)
  mesh = sharding.make_mesh(sizes, devices=devices)
  out = compile_train_step(config, mesh)
  return {"arguments_gib": out["argument_bytes"] / GIB, "temporaries_gib": out["temp_bytes"] / GIB,
          "compile_s": out["compile_s"]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--topology", default="v5p:2x2x2")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--seq", type=int, default=4096)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--num_experts", type=int, default=8)
  parser.add_argument("--top_k", type=int, default=2)
  parser.add_argument("--meshes", nargs="+", default=['{"fsdp": 8}', '{"expert": 8}'])
  args = parser.parse_args()
  devices = topologies.get_topology_desc(args.topology, "tpu").devices
  model = dict(d_model=args.d_model)
  rows = []
  for mesh_text in args.meshes:
    mesh_sizes = json.loads(mesh_text)
    for moe in (True, False):
      config = paper_config(args.batch, args.seq, moe, **model)
      config.model.moe.update(num_experts=args.num_experts, top_k=args.top_k)
      rows.append({"model": "moe" if moe else "dense", "mesh": mesh_sizes,
                   **measure(config, mesh_sizes, devices)})
      row = rows[-1]
      print(f"{row['model']:>6} {json.dumps(mesh_sizes):<32} arguments "
            f"{row['arguments_gib']:7.2f} GiB  temporaries {row['temporaries_gib']:7.2f} GiB  "
            f"compile {row['compile_s']:.0f} s", flush=True)
  print(json.dumps({"topology": args.topology, "batch": args.batch, "seq": args.seq,
                    "rows": rows}))


if __name__ == "__main__":
  main()
