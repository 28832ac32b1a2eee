"""Sweeps of "Optimal Sparsity of MoE Language Models for Reasoning Tasks" (Nakamura et al. 2025).

Presets (``get_sweep(preset)``):
  paper         the study's 65 models: d_model {512, 1024, 2048} x E {8..256} x k {2..16},
                k <= E, no d2048-E256; 16 layers, 125B tokens each. Named as the released
                checkpoints, ``d{D}-E{E}-k{K}-{TOTAL}-A{ACTIVE}``. Trained on a pod from a seqio
                task: ``--override=data.task=NAME``.
  tiny          the CPU study: families of fixed active parameters (d_model x top_k) whose total
                parameters grow with E, each with a dense baseline of the same active size.
  isoflop_tiny  equal training FLOPs per budget (steps chosen by moejax.counting), varied
                sparsity and active size.
  small         all seven findings in one command (``SMALL``): the tiny families, an iso-FLOP
                sweep of three budgets and a learning-rate / init-scale sweep, on TINY's data,
                model, optimiser, training and evaluation settings, with at least two seeds.
  smoke         three runs of seconds on synthetic tokens (tests).

Families (the ``family`` column): ``d{D}-k{K}`` holds fixed active parameters (and a fixed FLOP
budget, since every run of a preset trains the same tokens); iso-FLOP runs form one family
``C{budget}`` per budget; the lr / init sweep's runs form ``hp-d{D}-E{E}-k{K}``. The study
selects groups by what they hold (moejax/study/verdict_common.py), not by these names.

  python -m experiments.sweep --sweep=configs/sweeps/optimal_sparsity.py:paper --list
  python -m experiments.sweep --sweep=configs/sweeps/optimal_sparsity.py:tiny --workdir=DIR
"""

from __future__ import annotations

from configs import lm_moe
from moejax import counting
from moejax.sweeps.spec import make_run, steps_for_flops

PRESETS = ("paper", "tiny", "isoflop_tiny", "small", "smoke")

# The paper grid (Nakamura et al. 2025, arXiv 2508.18672: 65 trained models).
PAPER_D_MODELS = (512, 1024, 2048)
PAPER_EXPERTS = (8, 16, 32, 64, 128, 256)
PAPER_TOP_KS = (2, 4, 8, 16)
PAPER_NOT_TRAINED = ((2048, 256),)  # (d_model, E)

# The tiny CPU study: every knob that sets its cost is here. Tune steps and batch together.
# Two active sizes come from top-k 1 vs 2 at d_model 64 (8 runs per seed). Adding 128 to d_models
# crosses active size with top-k (16 runs; a d128 step costs ~3x a d64 step). In 800 steps of 16
# sequences each fact of the "study" data preset is seen ~29 times as QA and ~29 in biographies,
# and the reasoning half of the mixture teaches chain arithmetic (one token per step) well above
# chance. Two seeds (init and data order): the memorization trend must not hang on one. lr 5e-3
# with 4 heads of 16 memorises more at the same cost but flattens the trend with E (dense models
# catch up), so the study keeps 2e-3 and 2 heads of 32 (docs/calibration.md).
TINY = dict(
    d_models=(64,),
    top_ks=(1, 2),
    num_experts=(4, 8, 16),    # total parameters grow at fixed active parameters
    dense_baseline=True,       # a dense model with d_ff = k * expert_d_ff per family
    seeds=(0, 1),
    model=dict(num_layers=2, vocab_size=384),
    data=dict(preset="study", batch_size=16, seq_len=128),
    optim=dict(warmup_steps=20),
    train=dict(steps=800, log_every=40, checkpoint_every=400, eval_batches=8),
    eval=dict(max_items=256),  # 256 of the 400 QA facts per split; all 96 test problems
)
# Iso-FLOP: each budget is "REFERENCE trained for N steps"; every model gets the steps that
# spend the same FLOPs (rounded, so budgets agree to < 1% with >= 50 steps per run).
ISOFLOP_TINY = dict(
    models=((64, 1, 1), (64, 4, 1), (64, 16, 1), (128, 1, 1), (128, 4, 1), (128, 16, 1)),
    reference=(128, 1, 1),     # (d_model, E, k); E = 1 means dense
    reference_steps=(80, 240),
    seeds=(0,),
    model=TINY["model"], data=TINY["data"], optim=TINY["optim"],
    train=dict(log_every=10, checkpoint_every=100, eval_batches=4),
)
# The larger CPU study (--preset=small): every finding. It reads TINY at call time, so TINY's
# data, model, optimiser, steps, batch and evaluation carry over; seeds are TINY's (at least 2).
#   iso-FLOP     budgets = the reference (d128 dense) trained for these fractions of TINY's steps
#                (chosen so that no budget is within 10% of a tiny family's FLOPs: a budget
#                group must not absorb a family); six models per budget.
#   lr / init    each model of ``hparam_models`` at TINY's lr times ``lr_factors`` (min_lr
#                likewise) and at init scales ``init_scales`` (model.init_scale), the other knob
#                at its base value; the base point is the tiny family's run.
# Cost: measured end to end at TINY's 800 steps with --processes=2 on 2 CPU cores, 68 runs in
# 37.6 minutes wall (63.6 CPU-minutes; docs/calibration.md), against a budget of 2 hours;
# it scales with TINY's steps.
SMALL = dict(
    isoflop_models=ISOFLOP_TINY["models"],
    isoflop_reference=(128, 1, 1),
    isoflop_step_fractions=(1 / 8, 1 / 4, 1 / 2),
    isoflop_train=dict(log_every=10),
    hparam_models=((64, 1, 1), (64, 16, 1)),  # (d_model, E, k): dense and the sparsest
    lr_factors=(1 / 3, 3.0),
    init_scales=(0.5, 2.0),
    min_seeds=2,
)
SMOKE = dict(
    models=((1, 1), (2, 1), (4, 1)),  # (E, k); E = 1 means dense
    train=dict(steps=12, log_every=4, checkpoint_every=12, eval_batches=1),
)


def _model(d_model: int, experts: int, top_k: int) -> dict:
  """Model overrides; E = 1 is the family's dense baseline: a dense FFN of the same active size
  (d_ff = k * expert_d_ff, no router; moe_every=0). Top-1 routing keeps the raw softmax weight
  (Switch Transformer): renormalised over one expert it is always 1 and the router gets no
  gradient from the language-model loss (measured on the tiny study: memorization QA accuracy
  0.53 with, 0.70 without renormalisation at E=16)."""
  if experts == 1:
    return dict(d_model=d_model, moe_every=0, d_ff=top_k * 2 * d_model)
  return dict(d_model=d_model, moe=dict(num_experts=experts, top_k=top_k, renormalize=top_k > 1))


def _run(base, p, seed: int, *, model: dict, suffix: str = "", **kwargs):
  """A run of a CPU preset ``p``: its section overrides, seed (init and data order) and name
  (suffixed ``-s{seed}`` when the preset has several seeds)."""
  sections = {name: {**p.get(name, {}), **kwargs.pop(name, {})}
              for name in ("data", "optim", "train", "eval")}
  suffix = suffix + (f"-s{seed}" if len(p["seeds"]) > 1 else "")
  run = make_run(base, model={**p.get("model", {}), **model}, suffix=suffix, **sections,
                 **kwargs)
  run.config.seed = seed
  run.config.data.seed = seed
  return run


def paper():
  base = lm_moe.get_config("paper")
  return [make_run(base, family=f"d{d}-k{k}", model=_model(d, e, k))
          for d in PAPER_D_MODELS for e in PAPER_EXPERTS for k in PAPER_TOP_KS
          if k <= e and (d, e) not in PAPER_NOT_TRAINED]


def tiny(p=None):
  p = p or TINY
  base = lm_moe.get_config("tiny")
  return [_run(base, p, seed, family=f"d{d}-k{k}", model=_model(d, e, k))
          for seed in p["seeds"] for d in p["d_models"] for k in p["top_ks"]
          for e in ([1] if p["dense_baseline"] else []) + [e for e in p["num_experts"] if e >= k]]


def isoflop_tiny(p=None):
  p = p or ISOFLOP_TINY
  base = lm_moe.get_config("tiny")
  runs = []
  for ref_steps in p["reference_steps"]:
    reference = _run(base, p, 0, model=_model(*p["reference"]), train=dict(steps=ref_steps))
    budget = counting.summary(reference.config)["train_flops"]
    for seed in p["seeds"]:
      for d, e, k in p["models"]:
        run = _run(base, p, seed, model=_model(d, e, k), family=f"C{budget:.1e}",
                   suffix=f"-C{budget:.1e}", tags={"flop_budget": budget})
        run.config.train.steps = steps_for_flops(run.config, budget)
        runs.append(run)
  return runs


def _small_seeds(tiny_p) -> tuple[int, ...]:
  """TINY's seeds, with new ones after the largest up to SMALL's ``min_seeds``."""
  seeds = tuple(tiny_p["seeds"])
  missing = max(0, SMALL["min_seeds"] - len(seeds))
  return seeds + tuple(range(max(seeds) + 1, max(seeds) + 1 + missing))


def _tag_knobs(run):
  run.tags.update(lr=float(run.config.optim.lr), init_scale=float(run.config.model.init_scale))
  return run


def small(tiny_p=None, p=None):
  """The tiny families + an iso-FLOP sweep + an lr / init sweep (``SMALL``), on ``tiny_p``
  (default TINY) with at least ``SMALL["min_seeds"]`` seeds."""
  p = p or SMALL
  tiny_p = {**(tiny_p or TINY)}
  tiny_p["seeds"] = _small_seeds(tiny_p)
  base = lm_moe.get_config("tiny")
  families = [_tag_knobs(r) for r in tiny(tiny_p)]
  iso_p = dict(models=p["isoflop_models"], reference=p["isoflop_reference"],
               reference_steps=tuple(max(1, round(f * tiny_p["train"]["steps"]))
                                     for f in p["isoflop_step_fractions"]),
               seeds=tiny_p["seeds"], model=tiny_p["model"], data=tiny_p["data"],
               optim=tiny_p.get("optim", {}), eval=tiny_p.get("eval", {}),
               train={**tiny_p["train"], **p["isoflop_train"]})
  budgets = isoflop_tiny(iso_p)
  family_flops = {counting.summary(r.config)["train_flops"] for r in families}
  for run in budgets:
    budget = run.tags["flop_budget"]
    if any(abs(budget / f - 1) < 0.1 for f in family_flops):
      raise ValueError(f"iso-FLOP budget {budget:.3g} is within 10% of a tiny family's FLOPs; "
                       "change SMALL['isoflop_step_fractions']")
  hparams = []
  for seed in tiny_p["seeds"]:
    for d, e, k in p["hparam_models"]:
      knobs = [("lr", f) for f in p["lr_factors"]] + [("init", s) for s in p["init_scales"]]
      for knob, value in knobs:
        run = _run(base, tiny_p, seed, family=f"hp-d{d}-E{e}-k{k}", model=_model(d, e, k),
                   suffix=f"-{knob}{value:.3g}")
        if knob == "lr":
          run.config.optim.lr *= value
          run.config.optim.min_lr *= value
        else:
          run.config.model.init_scale = value
        hparams.append(_tag_knobs(run))
  return families + budgets + hparams


def smoke():
  base = lm_moe.get_config("smoke")
  d = base.model.d_model
  return [make_run(base, family=f"d{d}-k1", train=SMOKE["train"], model=_model(d, e, k))
          for e, k in SMOKE["models"]]


def get_sweep(preset: str = "tiny"):
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/sweeps/optimal_sparsity.py; "
                     f"choose from {PRESETS}")
  return {"paper": paper, "tiny": tiny, "isoflop_tiny": isoflop_tiny, "small": small,
          "smoke": smoke}[preset]()
