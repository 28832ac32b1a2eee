"""The tiny DiT-MoE study (Fei et al. 2024) on Fashion-MNIST 28x28 in pixel space (patch 7).

Presets (``get_sweep(preset)``):
  tiny   a dense DiT and DiT-MoE with E = 4, 8, 16 (k = 2, shared expert), plus E = 8 without
         the shared expert and its own dense match; two seeds.
  smoke  a dense DiT and one DiT-MoE on scikit-learn's digits, seconds (tests).

Matched active FFN FLOPs, not names: a token of DiT-MoE runs k experts of hidden F = 4D and a
shared SwiGLU of hidden 2D, i.e. SwiGLU hidden k F + 2D = 10D at k = 2 (2.5x the 4D MLP of a
same-width DiT), so the dense baseline has ``d_ff`` = k F + shared (10D; 8D for the model
without the shared expert). Router FLOPs (D E per token) are left unmatched and counted.

  python -m experiments.sweep --sweep=configs/sweeps/dit_moe.py:tiny --list
"""

from __future__ import annotations

from configs import dit_moe
from moejax import counting
from moejax.sweeps.spec import SweepRun, seeded_run

PRESETS = ("tiny", "smoke")

# Every knob that sets the tiny study's cost; tune steps and batch together.
TINY = dict(num_experts=(4, 8, 16), no_shared_experts=(8,), seeds=(0, 1),
            train=dict(steps=600, log_every=50, checkpoint_every=600, eval_batches=4),
            eval=dict(num_samples=500))
SMOKE = dict(num_experts=(4,), no_shared_experts=(), seeds=(0,),
             train=dict(steps=20, log_every=5, checkpoint_every=20, eval_batches=2),
             eval=dict(num_samples=100))


def matched_dense_d_ff(model) -> int:
  """The dense hidden size of the MoE model's active FFN FLOPs: k * expert + shared."""
  return model.moe.top_k * model.moe.d_ff + model.moe.shared_d_ff


def _run(base, *, family: str, seed: int, tags=None, **sections) -> SweepRun:
  """A seeded run named after the model (``/`` -> ``p``: a run name is a directory)."""
  return seeded_run(base, lambda model: counting.dit_name(model).replace("/", "p"),
                    family=family, seed=seed, tags=tags, **sections)


def get_sweep(preset: str = "tiny") -> list[SweepRun]:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/sweeps/dit_moe.py; choose from "
                     f"{PRESETS}")
  knobs = TINY if preset == "tiny" else SMOKE
  base = dit_moe.get_config("smoke" if preset == "smoke" else "tiny")
  base.train.update(knobs["train"])
  base.eval.update(knobs["eval"])
  base.train.progress_bar = False
  shared = matched_dense_d_ff(base.model)
  no_shared = shared - base.model.moe.shared_d_ff
  models = [("shared", {"moe_every": 0, "d_ff": shared})]
  models += [("shared", {"num_experts": e}) for e in knobs["num_experts"]]
  for e in knobs["no_shared_experts"]:
    models += [("no_shared", {"moe_every": 0, "d_ff": no_shared}),
               ("no_shared", {"num_experts": e, "moe": {"shared_d_ff": 0}})]
  runs = []
  # Seed-major order: a model's later seeds find its compiled step in the persistent cache.
  for seed in knobs["seeds"]:
    for family, model in models:
      runs.append(_run(base, family=family, seed=seed, tags={"study": "dit"}, model=model))
  return runs
