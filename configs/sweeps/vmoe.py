"""The image sparsity study of ViT-MoE (V-MoE, Riquelme et al. 2021) on Fashion-MNIST.

Presets (``get_sweep(preset)``):
  tiny   families of fixed active parameters (top-1 and top-2), each a dense ViT and E = 4, 8,
         16 experts in every other block (V-MoE "every 2"), two seeds; plus the task-routing
         runs: two tasks (10 classes, 3 coarse groups) with a shared, a per-task and a one-hot
         conditioned router (E = 8, k = 2). 19 runs of about 45 s, two at a time on 2 cores.
  smoke  four runs of seconds on scikit-learn's digits (tests).

The dense baseline of family k matches the MoE models' FFN FLOPs: with MoE in half of the
blocks, experts of hidden F and k of them per token, the MoE models spend (F + k F) / 2 per
block on average, so the dense ViT has hidden d_ff = (1 + k) F / 2 in every block.

  python -m experiments.sweep --sweep=configs/sweeps/vmoe.py:tiny --list
"""

from __future__ import annotations

from configs import vit_moe
from moejax import counting
from moejax.sweeps.spec import SweepRun, seeded_run

PRESETS = ("tiny", "smoke")

# Every knob that sets the tiny study's cost; tune steps and batch together.
TINY = dict(
    top_ks=(1, 2),
    num_experts=(4, 8, 16),
    seeds=(0, 1),
    task_routings=("shared", "per_task", "one_hot"),
    task_seeds=(0,),
    train=dict(steps=200, log_every=25, checkpoint_every=200, eval_batches=4),
)
SMOKE = dict(top_ks=(2,), num_experts=(4,), seeds=(0,), task_routings=("per_task",),
             task_seeds=(0,), train=dict(steps=10, log_every=5, checkpoint_every=10,
                                         eval_batches=2))


def _run(base, *, family: str, seed: int, suffix: str = "", tags=None, **sections) -> SweepRun:
  """A run of ``base`` updated by ``sections``, seeded (model init and data order) by
  ``seed``, named ``{vit_name}{suffix}-s{seed}``."""
  return seeded_run(base, lambda model: counting.vit_name(model) + suffix, family=family,
                    seed=seed, tags=tags, **sections)


def get_sweep(preset: str = "tiny") -> list[SweepRun]:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/sweeps/vmoe.py; choose from "
                     f"{PRESETS}")
  knobs = TINY if preset == "tiny" else SMOKE
  base = vit_moe.get_config("smoke" if preset == "smoke" else "tiny")
  base.train.update(knobs["train"])
  expert_d_ff = base.model.moe.d_ff
  runs = []
  # Seed-major order: a model's later seeds start after its first has compiled, so they find
  # its train step in the persistent compilation cache (the programs are identical).
  for seed in knobs["seeds"]:
    for k in knobs["top_ks"]:
      models = [{"moe_every": 0, "d_ff": (1 + k) * expert_d_ff // 2}]
      models += [{"moe": {"num_experts": e, "top_k": k}} for e in knobs["num_experts"]]
      runs += [_run(base, family=f"k{k}", seed=seed, tags={"study": "sparsity"}, model=model)
               for model in models]
  tasks_base = vit_moe.get_config("smoke" if preset == "smoke" else "tiny_tasks")
  tasks_base.train.update(knobs["train"])
  if preset == "smoke":  # digits: the 10 classes and even/odd
    tasks_base.data.tasks = ("class", "parity")
    tasks_base.model.num_classes = (10, 2)
  for routing in knobs["task_routings"]:
    runs += [_run(tasks_base, family="tasks", seed=seed, suffix=f"-tasks-{routing}",
                  tags={"study": "tasks", "task_routing": routing},
                  model={"moe": {"num_tasks": 2, "task_routing": routing}})
             for seed in knobs["task_seeds"]]
  return runs
