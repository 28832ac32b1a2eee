"""``evaluate_suites``: every suite metric of a model as one flat dict (a results-table row).

  metrics = evaluate_suites(model, tok, "tiny", data_dir=DIR, max_items=200)

Names: ``{suite}{split}_{metric}`` with suite ``mem`` (memorization) or ``reason`` (reasoning)
and split ``""`` (test: held-out items) or ``_train`` (train_eval: items seen in training);
the first six below are the columns analysis/results_schema.py reads:

  mem_task_loss, mem_accuracy, mem_train_accuracy, reason_task_loss, reason_accuracy,
  reason_train_accuracy,
  mem_train_task_loss, reason_train_task_loss, {suite}{split}_count (items evaluated),
  reason{split}_accuracy_d{N}         accuracy by difficulty (number of operations)
  mem{split}_accuracy_{attribute}     accuracy by attribute
  reason_chance_accuracy              1/p, the accuracy of guessing a residue mod p
  reason_majority_accuracy            the accuracy of always answering the test items' most
                                      common answer (above 1/p: a product is 0 whenever a
                                      factor is)
  reason_sc{n}_accuracy[_d{N}], reason_pass_at_{k}
                                      majority vote over the first n of ``sc_samples`` sampled
                                      answers per reasoning test item (n in ``sc_ns`` and
                                      ``sc_samples``; one set of samples serves every n), and
                                      pass@k for k in ``pass_ks``, ``sc_ns`` and ``sc_samples``
                                      (only with ``sc_samples > 0``)
  knowledge_bits[_seen|_unseen], knowledge_capacity_bits, knowledge_fraction, num_params,
  bits_per_param                      from the memorization items (metrics.knowledge_bits);
                                      seen = train_eval people, unseen = test people

Task losses are nats per answer token; accuracies are fractions. With ``max_items`` each split is
a fixed random subset (the same for every model), so knowledge bits then cover only those facts.

Per-item results (for bootstrap intervals over items; ``per_item`` fills them, ``save_items``
writes them beside eval.json as ``ITEMS_FILENAME``), arrays over the split's N items:

  {suite}{split}_uid [N] str             item ids (the same for every model evaluated alike)
  {suite}{split}_correct [N] bool        greedy answer correct
  {suite}{split}_nll [N] float           -ln p(answer + EOS | prompt), nats
  {suite}{split}_answer_tokens [N] int   answer tokens (EOS included): task loss = sum nll / sum
  reason_sc{n}_correct [N] bool          voted answer of the first n samples correct
  reason_sample_correct [N, S] bool      each of the S = sc_samples samples correct
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np
import tqdm
from flax import nnx

from moejax.data import presets
from moejax.data import records
from moejax.data import suites
from moejax.data import tokenizer as tokenizer_lib
from moejax.evaluation import batching
from moejax.evaluation import likelihood
from moejax.evaluation import metrics
from moejax.evaluation import model_io
from moejax.evaluation import tasks

SUITE_PREFIX = {"memorization": "mem", "reasoning": "reason"}
SPLIT_SUFFIX = {records.TEST: "", records.TRAIN_EVAL: "_train"}
ITEMS_FILENAME = "eval_items.npz"


def subset(items: Sequence[records.Example], max_items: int | None) -> list[records.Example]:
  """At most ``max_items`` of ``items``: a fixed random subset, in the original order."""
  if max_items is None or len(items) <= max_items:
    return list(items)
  keep = np.sort(np.random.default_rng(0).choice(len(items), max_items, replace=False))
  return [items[i] for i in keep]


def evaluate_suites(model: model_io.Model, tokenizer: tokenizer_lib.Tokenizer | None,
                    preset: str | presets.Preset = "tiny", data_dir: str | None = None, *,
                    graphdef: nnx.GraphDef | None = None,
                    suite_names: Sequence[str] = ("memorization", "reasoning"),
                    max_items: int | None = None, batch_size: int = 64, min_bucket: int = 16,
                    max_new_tokens: int | None = None, sc_samples: int = 0,
                    sc_ns: Sequence[int] = (), sc_temperature: float = 0.7,
                    pass_ks: Sequence[int] = (1,), seed: int = 0, num_params: int | None = None,
                    progress: bool = True,
                    per_item: dict[str, np.ndarray] | None = None) -> dict[str, float]:
  """Task loss, accuracy (test and train_eval), self-consistency and knowledge bits.

  Args:
    model: see ``model_io`` (a TrainState needs ``graphdef``).
    tokenizer: the preset's tokenizer; None loads it from ``data_dir``.
    preset: the data preset the model was trained on.
    data_dir: the data build; when given, the items are checked against its manifest.
    graphdef: the model's graphdef, for a TrainState.
    suite_names: suites to evaluate.
    max_items: at most this many items per suite split (``subset``); None for all.
    batch_size: rows per jitted call.
    min_bucket: shortest padded length (fewer, longer buckets mean fewer compilations).
    max_new_tokens: generation length; None derives it from each split's reference answers.
    sc_samples: samples per reasoning test item for self-consistency and pass@k (0: skip);
      the largest n of the majority vote.
    sc_ns: further n (<= ``sc_samples``) at which to report the vote of the first n samples.
    sc_temperature: sampling temperature for self-consistency.
    pass_ks: the k of pass@k (every n of ``sc_ns`` and ``sc_samples`` are also reported).
    seed: sampling seed.
    num_params: parameters for ``bits_per_param``; None counts the model's ``nnx.Param``s.
    progress: show a tqdm bar (units: generated or scored rows).
    per_item: when given, filled with the per-item arrays of the module docstring.
  """
  graphdef, states = model_io.split(model, graphdef)
  split_model = (graphdef, *states)
  preset_name = preset if isinstance(preset, str) else preset.name
  if tokenizer is None:
    if data_dir is None:
      raise ValueError("Pass a tokenizer or the data_dir holding the preset's build")
    tokenizer = tokenizer_lib.load_tokenizer(data_dir, preset_name)
  work = [(suite, split, subset(suites.eval_items(suite, split, preset, data_dir), max_items))
          for suite in suite_names for split in (records.TEST, records.TRAIN_EVAL)]
  total = sum(len(items) * (2 + (sc_samples if _wants_sc(suite, split, sc_samples) else 0))
              for suite, split, items in work)
  bar = tqdm.tqdm(total=total, desc="evaluate_suites", unit="row", disable=not progress)
  options = {"batch_size": batch_size, "min_bucket": min_bucket, "progress": bar.update}
  out: dict[str, float] = {}
  arrays: dict[str, np.ndarray] = {} if per_item is None else per_item
  knowledge: dict[str, dict[str, Any]] = {}
  for suite, split, items in work:
    name = SUITE_PREFIX[suite] + SPLIT_SUFFIX[split]
    tokens = batching.tokenize_items(tokenizer, items)
    nll_N, tokens_N = likelihood.answer_nll(split_model, tokens, **options)
    out[f"{name}_task_loss"] = likelihood.task_loss(nll_N, tokens_N)
    out[f"{name}_count"] = float(len(items))
    greedy = tasks.accuracy(split_model, tokenizer, items, max_new_tokens=max_new_tokens,
                            **options)
    out.update(_accuracies(name, greedy))
    arrays.update({f"{name}_uid": np.array([it.uid for it in items], dtype=str),
                   f"{name}_correct": np.array(greedy["item_correct"], dtype=bool),
                   f"{name}_nll": np.asarray(nll_N, np.float64),
                   f"{name}_answer_tokens": np.asarray(tokens_N, np.int64)})
    if _wants_sc(suite, split, sc_samples):
      ns = sorted({*(n for n in sc_ns if n <= sc_samples), sc_samples})
      sc = tasks.self_consistency(split_model, tokenizer, items, num_samples=sc_samples,
                                  temperature=sc_temperature, seed=seed,
                                  ks=sorted({*pass_ks, *ns}), max_new_tokens=max_new_tokens,
                                  **options)
      out.update({f"{name}_pass_at_{k}": v for k, v in sc["pass_at_k"].items()})
      arrays[f"{name}_sample_correct"] = np.array(sc["sample_correct"], dtype=bool)
      for n, voted in tasks.self_consistency_by_n(items, sc["samples"], ns).items():
        out.update(_accuracies(f"{name}_sc{n}", voted))
        arrays[f"{name}_sc{n}_correct"] = np.array(voted["item_correct"], dtype=bool)
    if suite == "memorization":
      info = suites.metadata(suite, preset)["information"]["attributes"]
      cardinality = {a: v["cardinality"] for a, v in info.items()}
      knowledge[split] = metrics.knowledge_bits(nll_N, [it.attribute for it in items],
                                                cardinality)
    if suite == "reasoning":  # answers are residues mod p: guessing scores 1/p
      out["reason_chance_accuracy"] = 1.0 / suites.metadata(suite, preset)["modulus"]
      if split == records.TEST:  # the best constant guess (products pile up on 0)
        answers = collections.Counter(it.answer for it in items)
        out["reason_majority_accuracy"] = answers.most_common(1)[0][1] / len(items)
  bar.close()
  if knowledge:
    out.update(_knowledge_metrics(knowledge, num_params or model_io.num_params(states)))
  return out


def save_items(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes ``per_item`` arrays (module docstring) to ``path`` (.npz, no pickled objects)."""
  np.savez_compressed(path, **arrays)


def load_items(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    return {key: data[key] for key in data.files}


def _wants_sc(suite: str, split: str, sc_samples: int) -> bool:
  return sc_samples > 0 and suite == "reasoning" and split == records.TEST


def _accuracies(name: str, scores: dict[str, Any]) -> dict[str, float]:
  out = {f"{name}_accuracy": float(scores["accuracy"])}
  out.update({f"{name}_accuracy_d{d}": float(s["accuracy"])
              for d, s in scores["by_difficulty"].items()})
  out.update({f"{name}_accuracy_{a}": float(s["accuracy"])
              for a, s in scores["by_attribute"].items()})
  return out


def _knowledge_metrics(knowledge: dict[str, dict[str, Any]], num_params: int) -> dict[str, float]:
  bits = sum(k["bits"] for k in knowledge.values())
  capacity = sum(k["capacity_bits"] for k in knowledge.values())
  out = {"knowledge_bits": bits, "knowledge_capacity_bits": capacity,
         "knowledge_fraction": bits / capacity if capacity else 0.0,
         "num_params": float(num_params), "bits_per_param": bits / max(num_params, 1)}
  for split, suffix in ((records.TRAIN_EVAL, "_seen"), (records.TEST, "_unseen")):
    if split in knowledge:
      out[f"knowledge_bits{suffix}"] = knowledge[split]["bits"]
  return out
