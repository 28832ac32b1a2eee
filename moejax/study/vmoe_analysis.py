"""Analyses of trained ViT-MoE runs (the image sparsity study, moejax/study/vmoe.py).

  accuracy_table      test accuracy per model (seeds averaged) with percentile-bootstrap
                      intervals over test images (resampled jointly for all runs), and the
                      Spearman correlation with total parameters per family of fixed active
                      parameters, with its interval.
  capacity_curve      accuracy as the inference capacity factor C shrinks, with and without
                      Batch Prioritized Routing (V-MoE, Riquelme et al. 2021, fig. 5).
  class_specialization
                      normalised mutual information between each token's first-choice expert
                      and its image's class, per MoE layer, against a permutation null
                      (class labels shuffled over images), and expert usage by class.
  task_routing        for a two-task run: the experts each task uses, their overlap, and the
                      accuracy a task keeps when it may only load its m most used experts
                      (Edge-MoE, Sarkar et al. 2023).

A trained run is loaded with ``training.restore.restore_run``; models with other MoE settings
(capacity, recorded choices) are the same parameters merged into another graph.

Axes: M MoE layers (depth order), N images, R rows (task, image) of an evaluation, S tokens
per image, K choices per token, E experts, C classes, B resamples.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
from flax import nnx

from analysis.bootstrap import interval, resample_counts
from moejax.models.vit import ViTConfig
from moejax.study import routing_stats
from moejax.study.intervals import rank_correlation
from moejax.training import task as task_lib
from moejax.training.state import model_graphdef, split_model

NUM_RESAMPLES = 1000
SEED = 0
BATCH_IMAGES = 1000  # analyses evaluate in larger batches than training (fewer, bigger calls)


# ---------------------------------------------------------------- accuracy with intervals

def accuracy_table(models: pd.DataFrame, items: dict[str, dict[str, np.ndarray]],
                   num_resamples: int = NUM_RESAMPLES) -> tuple[pd.DataFrame, dict]:
  """``models`` (one row per model, ``runs`` = its run names, comma-separated) with
  ``test_accuracy`` (seed mean), ``_lo``/``_hi`` (95% over images) and, per family, the
  Spearman correlation of accuracy with total parameters (estimate and interval)."""
  reference = next(iter(items.values()))["image"]
  counts_BN = resample_counts(len(reference), num_resamples, SEED)
  reps, estimates = [], []
  for runs in models["runs"]:
    per_seed = []
    for run in runs.split(","):
      if not np.array_equal(items[run]["image"], reference):
        raise ValueError(f"run {run} was evaluated on other test images")
      per_seed.append(items[run]["correct"].astype(np.float64))
    correct_N = np.mean(per_seed, axis=0)
    estimates.append(correct_N.mean())
    reps.append(counts_BN @ correct_N / len(correct_N))
  out = models.copy()
  out["test_accuracy"] = estimates
  bounds = np.array([interval(e, r)["ci"] for e, r in zip(estimates, reps)])
  out["test_accuracy_lo"], out["test_accuracy_hi"] = bounds.T
  reps_MB = np.stack(reps)
  trends = {}
  for family, rows in out.groupby("family", sort=False):
    if len(rows) < 3:
      continue
    idx = rows.index.to_numpy()
    estimate = rank_correlation(rows["total_params"].to_numpy(float),
                                np.asarray(estimates)[idx][:, None])[0]
    trends[family] = interval(estimate, rank_correlation(rows["total_params"].to_numpy(float),
                                                         reps_MB[idx]))
  return out, trends


# ---------------------------------------------------------------- models with other settings

def with_moe(config, **fields):
  """A copy of the run config with ``config.model.moe`` fields replaced."""
  config = copy.deepcopy(config)
  config.model.moe.update(fields)
  return config


def test_source(config, *, max_images: int | None = None, split: str = "test",
                batch_images: int = BATCH_IMAGES):
  """The evaluation source over ``split`` (optionally its first ``max_images`` images), in
  batches of ``batch_images`` (a multiple of the routing group, so groups stay whole)."""
  task = task_lib.get(config)
  image_set = task.load_split(config, split)
  if max_images is not None:
    image_set = dataclasses.replace(image_set, images_NHWC=image_set.images_NHWC[:max_images],
                                    labels_N=image_set.labels_N[:max_images])
  group = config.model.get("group_images") or 1
  return task.eval_source(config, image_set, max(group, batch_images // group * group))


def predict_with(run, config, source, model_state=None) -> dict[str, np.ndarray]:
  """``tasks.vit.predict`` with the run's parameters in the graph of ``config``."""
  from moejax.tasks.vit import predict  # pylint: disable=import-outside-toplevel
  return predict(model_graphdef(config), run.state, source, model_state=model_state)


def _accuracy(out, task: int | None = None) -> float:
  keep = out["weights"] > 0
  if task is not None:
    keep &= out["task_ids"] == task
  return float(out["correct"][keep].mean())


def capacity_curve(run, factors=(0.25, 0.5, 0.75, 1.0, 1.25), source=None) -> pd.DataFrame:
  """Test accuracy at each inference capacity factor, with and without BPR (and dropless)."""
  source = source or test_source(run.config)
  rows = []
  for bpr in (True, False):
    for factor in factors:
      config = with_moe(run.config, capacity_factor=factor, batch_prioritized=bpr)
      out = predict_with(run, config, source)
      rows.append({"capacity_factor": factor, "bpr": bpr, "accuracy": _accuracy(out),
                   "dropped_fraction": float(np.mean(out["dropped_fraction"]))})
  out = predict_with(run, with_moe(run.config, capacity_factor=None), source)
  rows.append({"capacity_factor": None, "bpr": False, "accuracy": _accuracy(out),
               "dropped_fraction": 0.0})
  return pd.DataFrame(rows)


# ---------------------------------------------------------------- routing by class and task

def token_choices(run, source, model_state=None) -> dict[str, np.ndarray]:
  """Predictions plus ``expert_choices`` [M, R, S, K] (-1: no expert) of every real row."""
  config = with_moe(run.config, return_choices=True)
  out = predict_with(run, config, source, model_state)
  keep = out["weights"] > 0
  num_tokens = ViTConfig.from_config(config.model).num_tokens
  choices = out["expert_choices"]
  choices_MRSK = choices.reshape(choices.shape[0], -1, num_tokens, choices.shape[-1])
  result = {k: v[keep] for k, v in out.items() if len(v) == len(keep)}
  result["expert_choices"] = choices_MRSK[:, keep]
  return result


def class_specialization(choices_MRSK, labels_R, num_classes: int, num_experts: int,
                         num_permutations: int = 20, seed: int = 0) -> dict:
  """NMI(first-choice expert; class) per layer over the tokens with an expert, the same
  statistic with labels permuted over images (mean and 95th percentile), and usage [M, C, E]
  (fraction of a class's tokens whose first choice is each expert)."""
  rng = np.random.default_rng(seed)
  first_MRS = choices_MRSK[..., 0]
  nmi, null_mean, null_p95, usage = [], [], [], []
  for first_RS in first_MRS:
    labels_RS = np.broadcast_to(labels_R[:, None], first_RS.shape)
    stats = routing_stats.nmi_against_null(first_RS, labels_RS, "rows", num_permutations, rng)
    for values, value in zip((nmi, null_mean, null_p95), stats):
      values.append(value)
    usage.append(routing_stats.usage_by_value(first_RS, labels_RS, num_classes, num_experts))
  return {"nmi": nmi, "null_mean": null_mean, "null_p95": null_p95,
          "usage_MCE": np.stack(usage)}


def task_usage(choices_MRSK, task_R, num_tasks: int, num_experts: int) -> np.ndarray:
  """[M, N_tasks, E]: the fraction of a task's token-choices that go to each expert."""
  usage = np.zeros((choices_MRSK.shape[0], num_tasks, num_experts))
  for m, choices_RSK in enumerate(choices_MRSK):
    for t in range(num_tasks):
      picked = choices_RSK[task_R == t].reshape(-1)
      picked = picked[picked >= 0]
      usage[m, t] = np.bincount(picked, minlength=num_experts) / max(len(picked), 1)
  return usage


def usage_overlap(usage_MTE) -> list[float]:
  """Per layer, sum_e min(u_0[e], u_1[e]) of the first two tasks: 1 = the same experts in the
  same proportions, 0 = disjoint experts."""
  return [float(np.minimum(u_TE[0], u_TE[1]).sum()) for u_TE in usage_MTE]


def keep_top_experts(usage_MTE, keep: int) -> np.ndarray:
  """Mask [M, N_tasks, E]: each task's ``keep`` most used experts per layer."""
  order_MTE = np.argsort(-usage_MTE, axis=-1, kind="stable")
  mask = np.zeros_like(usage_MTE)
  np.put_along_axis(mask, order_MTE[..., :keep], 1.0, axis=-1)
  return mask


def masked_state(run, mask_MTE):
  """The run's non-parameter state with every router's task mask set (depth order)."""
  model = nnx.merge(run.graphdef, run.state.params, run.state.model_state, copy=True)
  model.trunk.set_task_expert_masks(np.asarray(mask_MTE, np.float32))
  return split_model(model)[2]


def task_routing(run, keeps=(1, 2, 3, 4, 6, 8), usage_images: int = 2000,
                 test_source_=None) -> dict:
  """Per-task accuracy, expert usage (measured on ``usage_images`` training images), the
  overlap of the tasks' experts, and accuracy when each task keeps its top-m experts."""
  config = run.config
  num_tasks, num_experts = len(config.data.tasks), config.model.moe.num_experts
  usage_out = token_choices(run, test_source(config, max_images=usage_images, split="train"))
  usage_MTE = task_usage(usage_out["expert_choices"], usage_out["task_ids"], num_tasks,
                         num_experts)
  source = test_source_ or test_source(config)
  full = predict_with(run, config, source)
  rows = []
  for keep in sorted(k for k in keeps if k <= num_experts):
    out = predict_with(run, config, source, masked_state(run, keep_top_experts(usage_MTE, keep)))
    for t, name in enumerate(config.data.tasks):
      rows.append({"task": name, "experts_kept": keep, "fraction_loaded": keep / num_experts,
                   "accuracy": _accuracy(out, t), "full_accuracy": _accuracy(full, t)})
  return {"accuracy": {name: _accuracy(full, t) for t, name in enumerate(config.data.tasks)},
          "usage_MTE": usage_MTE, "overlap": usage_overlap(usage_MTE),
          "pruning": pd.DataFrame(rows)}
