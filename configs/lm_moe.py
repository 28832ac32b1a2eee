"""MoE language model configs. Presets: ``smoke`` (seconds, tests), ``tiny`` (a real CPU run,
a few minutes on 2 cores), ``paper`` (the study's model family, Nakamura et al. 2025; counted
and compiled here, trained on a pod).

  python -m experiments.train --config=configs/lm_moe.py:tiny --workdir=/tmp/run \
      --config.model.moe.num_experts=16
"""

from __future__ import annotations

import ml_collections

from moejax.moe import config as moe_config

PRESETS = ("smoke", "tiny", "paper")


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Defaults are the paper's architecture (Mixtral-style, d_model 512, E=8, k=2).

  Heads, kv heads and the FFN sizes follow d_model (heads = d_model / head_dim, hidden =
  2 * d_model) unless set explicitly, so ``--config.model.d_model=1024`` gives the paper's d1024.
  The MoE layer's fields are the section ``moe`` (moejax/moe/config.py documents each).
  """
  cfg = ml_collections.ConfigDict(dict(
      vocab_size=99_584,          # 99,574 SentencePiece pieces padded to a multiple of 128
      d_model=512,
      num_layers=16,
      head_dim=128,
      # MoE placement (moejax/models/trunk.py): every n-th layer (1: all, 0: a dense model),
      # optionally only the last n of those (V-MoE "last-n"), or an explicit list of indices.
      moe_every=1,
      moe_last_n=ml_collections.FieldReference(None, field_type=int),
      moe_layers=ml_collections.FieldReference(None, field_type=tuple),
      ffn_type="swiglu",          # dense FFN layers: swiglu | gelu
      rope_base=10_000.0,
      norm_eps=1e-5,
      dtype="float32",            # compute dtype: float32 | bfloat16
      param_dtype="float32",
      remat="none",               # none | full | dots
      init_scale=1.0,             # multiplies the fan-in init std (finding 7's init sweep)
  ))
  # Each derived field gets its own lazy reference: assigning one (e.g. num_kv_heads=1) must
  # not write through to another (a shared FieldReference would).
  cfg.num_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")
  cfg.num_kv_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")  # MHA: kv = query heads
  cfg.d_ff = 2 * cfg.get_ref("d_model")         # hidden of dense FFN layers
  cfg.moe = moe_config.config_section(num_experts=8, top_k=2)
  # Each expert's hidden size: 2 * d_model / granularity (fine-grained MoE).
  cfg.moe.d_ff = 2 * cfg.get_ref("d_model") // cfg.moe.get_ref("granularity")
  cfg.update(overrides)
  return cfg


def aux_loss_weights() -> ml_collections.ConfigDict:
  """Weight of each auxiliary loss by name, for every loss a router or the MoE layer defines;
  None (the default) takes the default of the component that defines it (load balance 1e-2
  and router z 1e-3 as in Nakamura et al. 2025; V-MoE's importance and load losses 0.005).
  Setting a weight for a loss the model does not return is a config error."""
  names = moe_config.all_aux_loss_names()
  return ml_collections.ConfigDict(
      {name: ml_collections.FieldReference(None, field_type=float) for name in names})


def sharding_rules() -> list:
  """The logical -> mesh axis table shared by the model families' configs."""
  return [
      ("batch", ["data", "fsdp", "expert"]),
      ("embed", "fsdp"),
      ("expert", "expert"), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", None),
      ("vocab", None), ("layers", None), ("seq", None), ("act_embed", None),
      ("act_heads", "tensor"),
  ]


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/lm_moe.py; choose from {PRESETS}")
  cfg = ml_collections.ConfigDict()
  cfg.preset = preset
  cfg.task = "lm"                 # the model family (moejax/training/task.py)
  cfg.seed = 0
  cfg.model = model_config()
  # Data (moejax/data/): "suites" = the memorization/reasoning/filler mixture built offline
  # (built on first use into data_dir; "" = $MOEJAX_DATA_DIR or ~/.cache/moejax/data),
  # "synthetic" = a random Markov chain (no TensorFlow; tests), "seqio" = any seqio task.
  cfg.data = ml_collections.ConfigDict(dict(
      source="suites", preset="tiny", data_dir="", mixture="", split="train",
      build_if_missing=True, task="", seqio_module="", seed=0, batch_size=1024, seq_len=4096,
      branching=4,             # synthetic source only
      eval_split="test",       # held-out loss: the suites' test split ...
      eval_seed=1_000_003))    # ... or, for synthetic data, a stream with another seed
  cfg.optim = ml_collections.ConfigDict(dict(
      lr=4e-4, min_lr=4e-5, warmup_steps=2000, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
      grad_clip=1.0))
  cfg.aux_loss_weights = aux_loss_weights()
  cfg.train = ml_collections.ConfigDict(dict(
      steps=29_803, log_every=10, checkpoint_every=500, keep_checkpoints=3, eval_batches=8,
      progress_bar=True,
      microbatches=1))  # gradient accumulation (moejax/training/step.py)
  # Evaluation after training on the data suites (moejax/evaluation/): QA and reasoning
  # accuracy by greedy generation, task losses, knowledge bits; sc_samples > 0 samples that
  # many answers per reasoning test item: majority vote of the first n for n in sc_ns and
  # sc_samples (test-time compute, finding 6), and pass@k. max_items caps each split (a fixed
  # subset; 0 = all).
  cfg.eval = ml_collections.ConfigDict(dict(suites=True, max_items=256, batch_size=64,
                                            sc_samples=16, sc_ns=(1, 4, 16)))
  # Mesh axis sizes (-1: all remaining devices; any axis may be 1) and the logical -> mesh axis
  # table (docs/parallelism.md). The batch is split over data, fsdp and expert; parameters'
  # d_model over fsdp (gathered per layer); the experts over expert (expert parallelism, tokens
  # exchanged all-to-all); hidden units and attention heads over tensor.
  cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
  cfg.sharding_rules = sharding_rules()

  if preset == "smoke":
    cfg.model.update(vocab_size=64, d_model=32, num_layers=2, head_dim=16, num_kv_heads=1)
    cfg.model.moe.update(num_experts=4, top_k=2)
    cfg.data.update(source="synthetic", batch_size=8, seq_len=32)
    cfg.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=5)
    cfg.train.update(steps=30, log_every=5, checkpoint_every=10, eval_batches=2)
    cfg.eval.sc_samples = 0
  elif preset == "tiny":
    cfg.model.update(vocab_size=512, d_model=128, num_layers=4, head_dim=32)
    cfg.model.moe.update(num_experts=8, top_k=2)
    cfg.data.update(batch_size=32, seq_len=128)
    cfg.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=20)
    cfg.train.update(steps=200, log_every=10, checkpoint_every=100, eval_batches=8)
    # Self-consistency at n <= 8 roughly doubles the evaluation's generation (2 cores).
    cfg.eval.update(max_items=128, sc_samples=8, sc_ns=(1, 2, 4, 8))
  elif preset == "paper":
    # Trained on a pod from a real corpus: name its seqio task, e.g. --config.data.task=c4_lm.
    cfg.data.update(source="seqio", task="")
    # What a pod run uses, and what experiments.plan compiles: bfloat16 compute (float32
    # parameters and optimizer state) and full rematerialisation of each layer.
    cfg.model.update(dtype="bfloat16", remat="full")
  return cfg
