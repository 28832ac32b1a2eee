"""SYNTHETIC demo results table: made-up numbers in the results schema, for docs and tests.

Nothing here is measured. ``make_demo_results`` draws a small sweep (three model widths,
dense and MoE configurations, three compute budgets) whose losses follow a known law and
whose evaluation metrics follow hand-written trends shaped like the findings of Nakamura et
al. (2025): memorization improves with total parameters; reasoning task loss is U-shaped in
tokens per parameter with its best near TPP ~ 20; the train-test gap grows with sparsity;
a majority vote over n samples (``reason_sc{n}_accuracy``, n in ``DEMO_SC_NS``) raises
reasoning accuracy without changing the models' order.
Use it to exercise the fitting and figure code, never as evidence. Every run name starts
with "synthetic-" and ``df.attrs["synthetic"]`` is True.

Losses follow the sparsity law of ``analysis.laws.sparsity`` with ``DEMO_TRUTH`` (E, A, B,
alpha, beta: Hoffmann et al. 2022's fitted Chinchilla coefficients; lambda chosen here), with
multiplicative noise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

DEMO_TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "lambda": 0.2}
DEMO_EXPERT_CONFIGS = ((1, 1), (4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (32, 2),
                       (32, 4))
DEMO_BUDGETS = (1e15, 3e15, 1e16)
DEMO_D_MODELS = (64, 128, 256)
DEMO_SC_NS = (1, 4, 16)
_NUM_LAYERS = 4
_VOCAB = 512


def approx_param_counts(d_model: int, num_experts: int, top_k: int,
                        num_layers: int = _NUM_LAYERS, vocab: int = _VOCAB) -> tuple[int, int]:
  """(total, active) parameters of a toy Mixtral-style LM, approximately (demo only).

  Attention 4 d^2 per layer; SwiGLU experts of hidden 2d (6 d^2 each); a router d E;
  untied embeddings 2 V d. Real tables take their counts from ``moejax.counting``.
  """
  attn = 4 * d_model ** 2
  expert = 6 * d_model ** 2
  router = d_model * num_experts if num_experts > 1 else 0
  embed = 2 * vocab * d_model
  total = num_layers * (attn + expert * num_experts + router) + embed
  active = num_layers * (attn + expert * top_k) + embed
  return total, active


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def make_demo_results(seed: int = 0, budgets: Sequence[float] = DEMO_BUDGETS,
                      d_models: Sequence[int] = DEMO_D_MODELS,
                      expert_configs: Sequence[tuple[int, int]] = DEMO_EXPERT_CONFIGS,
                      noise: float = 0.005, add_failed_run: bool = True) -> pd.DataFrame:
  """A deterministic SYNTHETIC results table (see the module docstring).

  Args:
    seed: noise seed.
    budgets: training FLOP budgets; every configuration is trained at each one
      (tokens = budget / (6 * active params)).
    d_models: model widths.
    expert_configs: (E, k) pairs; (1, 1) is the dense model.
    noise: relative noise of the losses (log-normal sigma).
    add_failed_run: append one run with status "failed" and no metrics.

  Returns:
    A DataFrame with every column of ``analysis.results_schema``.
  """
  rng = np.random.default_rng(seed)
  t = DEMO_TRUTH
  rows = []
  for budget in budgets:
    for d_model in d_models:
      for num_experts, top_k in expert_configs:
        total, active = approx_param_counts(d_model, num_experts, top_k)
        tokens = budget / (6.0 * active)
        sparsity = 1.0 - top_k / num_experts
        tpp = tokens / total
        eval_loss = (t["E"] + t["A"] * (1.0 - sparsity) ** t["lambda"] / active ** t["alpha"]
                     + t["B"] / tokens ** t["beta"]) * np.exp(noise * rng.standard_normal())
        train_loss = eval_loss - (0.01 + 0.05 / (1.0 + tpp / 5.0))
        mem_acc = _sigmoid(2.5 * (np.log10(total) - 6.6) + 0.1 * rng.standard_normal())
        mem_loss = (0.2 + 2.0 * (1.0 - mem_acc)) * np.exp(noise * rng.standard_normal())
        reason_loss = (1.2 + 0.35 * (np.log10(tpp) - np.log10(20.0)) ** 2
                       - 0.15 * np.log10(active / 1e6)) * np.exp(noise * rng.standard_normal())
        reason_acc = _sigmoid(-4.0 * (reason_loss - 1.3) + 0.3 * np.log2(top_k)
                              + 0.1 * rng.standard_normal())
        rows.append({
            "name": f"synthetic-d{d_model}-E{num_experts}-k{top_k}-C{budget:.0e}",
            "family": f"d{d_model}-k{top_k}",
            "d_model": d_model, "num_experts": num_experts, "top_k": top_k,
            "total_params": total, "active_params": active, "train_tokens": tokens,
            "train_flops": budget, "sparsity": sparsity, "tpp": tpp,
            "final_train_loss": train_loss, "final_eval_loss": eval_loss,
            "seed": seed, "status": "done",
            "mem_task_loss": mem_loss, "mem_accuracy": mem_acc,
            "mem_train_accuracy": min(1.0, mem_acc + 0.02 + 0.05 * sparsity),
            "reason_task_loss": reason_loss, "reason_accuracy": reason_acc,
            "reason_train_accuracy": min(1.0, reason_acc + 0.03 + 0.15 * sparsity),
            **{f"reason_sc{n}_accuracy": reason_acc + (1 - reason_acc) * 0.1 * np.log2(n) / 4
               for n in DEMO_SC_NS},
        })
  df = pd.DataFrame(rows)
  if add_failed_run:
    failed = {c: np.nan for c in df.columns}
    failed.update({k: v for k, v in rows[0].items() if k in ("d_model", "num_experts",
                                                             "top_k", "sparsity", "seed")})
    failed.update(name="synthetic-failed-run", status="failed")
    df = pd.concat([df, pd.DataFrame([failed])], ignore_index=True)
  df.attrs["synthetic"] = True
  return df
