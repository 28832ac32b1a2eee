"""MoE language model configs. Presets: ``smoke`` (seconds, tests), ``tiny`` (a real CPU run,
a few minutes on 2 cores), ``paper`` (the study's model family, Nakamura et al. 2025; counted
and compiled here, trained on a pod).

  python -m experiments.train --config=configs/lm_moe.py:tiny --workdir=/tmp/run \
      --config.model.num_experts=16
"""

from __future__ import annotations

import ml_collections

PRESETS = ("smoke", "tiny", "paper")


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Defaults are the paper's architecture (Mixtral-style, d_model 512, E=8, k=2).

  Heads, kv heads and the FFN sizes follow d_model (heads = d_model / head_dim, hidden =
  2 * d_model) unless set explicitly, so ``--config.model.d_model=1024`` gives the paper's d1024.
  """
  cfg = ml_collections.ConfigDict(dict(
      vocab_size=99_584,          # 99,574 SentencePiece pieces padded to a multiple of 128
      d_model=512,
      num_layers=16,
      head_dim=128,
      num_experts=8,
      top_k=2,
      shared_expert_d_ff=0,       # 0: no always-on shared expert
      moe_every=1,                # 1: every layer MoE; n: every n-th; 0: dense model
      router="softmax_top_k",     # softmax_top_k | sigmoid_top_k | noisy_top_k | expert_choice
                                  # | sinkhorn_top_k | relu  (moejax/moe/routers.py)
      router_renormalize=True,
      router_bias_update_rate=0.0,  # > 0: aux-loss-free balancing bias (softmax/sigmoid top-k)
      router_noise_std=ml_collections.FieldReference(None, field_type=float),  # None: 1/E
      sinkhorn_iterations=8,
      initial_top_k=ml_collections.FieldReference(None, field_type=int),  # top-k schedule:
      top_k_decay_steps=0,        # k falls from initial_top_k to top_k over these steps
      dispatch="sorted",          # sorted (dropless) | einsum (GShard reference) | ragged_dot
      capacity_factor=ml_collections.FieldReference(None, field_type=float),  # None: dropless
      batch_prioritized_routing=False,  # with a capacity: fill it by decreasing top gate (BPR)
      granularity=1,              # expert hidden = 2 * d_model / granularity (fine-grained)
      balance_per_sequence=False,  # balance loss per sequence, averaged
      detailed_moe_metrics=False,  # load spread, importance, token/chunk sparsity metrics
      sparsity_chunk_size=8,
      rope_base=10_000.0,
      norm_eps=1e-5,
      dtype="float32",            # compute dtype: float32 | bfloat16
      param_dtype="float32",
      remat="none",               # none | full | dots
  ))
  # Each derived field gets its own lazy reference: assigning one (e.g. num_kv_heads=1) must
  # not write through to another (a shared FieldReference would).
  cfg.num_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")
  cfg.num_kv_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")  # MHA: kv = query heads
  cfg.d_ff = 2 * cfg.get_ref("d_model")         # hidden of dense FFN layers
  cfg.expert_d_ff = 2 * cfg.get_ref("d_model") // cfg.get_ref("granularity")  # per expert
  cfg.update(overrides)
  return cfg


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/lm_moe.py; choose from {PRESETS}")
  cfg = ml_collections.ConfigDict()
  cfg.preset = preset
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
      grad_clip=1.0, load_balance_coef=1e-2, router_z_coef=1e-3,
      # Coefficients of the other MoE losses (aux keys importance_loss, load_loss,
      # router_sparsity_loss); V-MoE uses 0.005 each for importance and load.
      importance_loss_coef=0.0, load_loss_coef=0.0, router_sparsity_coef=0.0))
  cfg.train = ml_collections.ConfigDict(dict(
      steps=29_803, log_every=10, checkpoint_every=500, keep_checkpoints=3, eval_batches=8,
      progress_bar=True))
  # Evaluation after training on the data suites (moejax/evaluation/): QA and reasoning
  # accuracy by greedy generation, task losses, knowledge bits; sc_samples > 0 samples that
  # many answers per reasoning test item: majority vote of the first n for n in sc_ns and
  # sc_samples (test-time compute, finding 6), and pass@k. max_items caps each split (a fixed
  # subset; 0 = all).
  cfg.eval = ml_collections.ConfigDict(dict(suites=True, max_items=256, batch_size=64,
                                            sc_samples=16, sc_ns=(1, 4, 16)))
  # Mesh axis sizes (-1: all remaining devices) and the logical -> mesh axis table.
  cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  cfg.sharding_rules = [
      ("batch", ["data", "fsdp"]),
      ("embed", "fsdp"),
      ("expert", None), ("mlp", None), ("heads", None), ("kv_heads", None), ("vocab", None),
      ("layers", None), ("seq", None), ("act_embed", None), ("act_heads", None),
  ]

  if preset == "smoke":
    cfg.model.update(vocab_size=64, d_model=32, num_layers=2, head_dim=16, num_kv_heads=1,
                     num_experts=4, top_k=2)
    cfg.data.update(source="synthetic", batch_size=8, seq_len=32)
    cfg.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=5)
    cfg.train.update(steps=30, log_every=5, checkpoint_every=10, eval_batches=2)
    cfg.eval.sc_samples = 0
  elif preset == "tiny":
    cfg.model.update(vocab_size=512, d_model=128, num_layers=4, head_dim=32, num_experts=8,
                     top_k=2)
    cfg.data.update(batch_size=32, seq_len=128)
    cfg.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=20)
    cfg.train.update(steps=200, log_every=10, checkpoint_every=100, eval_batches=8)
    # Self-consistency at n <= 8 roughly doubles the evaluation's generation (2 cores).
    cfg.eval.update(max_items=128, sc_samples=8, sc_ns=(1, 2, 4, 8))
  elif preset == "paper":
    # Trained on a pod from a real corpus: name its seqio task, e.g. --config.data.task=c4_lm.
    cfg.data.update(source="seqio", task="")
  return cfg
