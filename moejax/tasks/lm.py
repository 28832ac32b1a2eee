"""The language-model task: next-token cross-entropy on packed token batches.

Batches come from moejax/data/sources.py (the offline suites, a synthetic Markov chain or any
seqio task); after training, a model trained on the suites is evaluated by generation on them
(memorization QA, reasoning; moejax/evaluation/suite_metrics.py).

Axes: B batch, T sequence, V vocabulary.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from moejax import counting
from moejax.data.sources import BATCH_KEYS, make_source
from moejax.errors import require
from moejax.models.lm import MoELM, trunk_config
from moejax.training.task import BatchField, Task


def masked_cross_entropy(logits_BTV, targets_BT, mask_BT):
  """Mean next-token cross-entropy (nats) over positions where ``mask_BT`` is 1."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  return jnp.sum(losses_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


class LMTask(Task):
  """Decoder-only MoE language model (moejax/models/lm.py)."""
  name = "lm"

  def check(self, config: ml_collections.ConfigDict) -> None:
    trunk_config(config.model)
    require(config.data.seq_len > 0, f"config.data.seq_len={config.data.seq_len} must be > 0")

  def build_model(self, model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MoELM:
    return MoELM.from_config(model, rngs=rngs)

  def loss(self, model: MoELM, batch: dict):
    logits_BTV, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"]), aux

  def aux_loss_defaults(self, model: ml_collections.ConfigDict) -> dict[str, float]:
    return trunk_config(model).aux_loss_defaults()

  def batch_spec(self, config: ml_collections.ConfigDict) -> dict[str, BatchField]:
    shape = (config.data.batch_size, config.data.seq_len)
    return {name: BatchField(shape, jnp.float32 if name == "loss_mask" else jnp.int32,
                             ("batch", "seq")) for name in BATCH_KEYS}

  def make_source(self, config: ml_collections.ConfigDict, split: str):
    """``split`` "train" reads ``config.data``; "eval" its held-out split (the suites' test
    split, or for synthetic data a stream with ``eval_seed``)."""
    data = config.data
    if split == "eval":
      data = config.data.copy_and_resolve_references()
      with data.unlocked():
        data.seed = config.data.eval_seed
        data.split = config.data.eval_split
    return make_source(data, config.model.vocab_size)

  def evaluate(self, config, graphdef, state, *, eval_loss, items_dir=None) -> dict:
    """Perplexity, and ``evaluate_suites``."""
    return {"eval_perplexity": float(np.exp(eval_loss)),
            **self.evaluate_suites(config, graphdef, state, items_dir)}

  def evaluate_suites(self, config, graphdef, state, items_dir=None) -> dict:
    """Generation-based metrics on the data suites (memorization QA, reasoning), when trained
    on them; single-process only (generation gathers results on the host). With
    ``items_dir``, the per-item results are written there."""
    if config.data.source != "suites" or not config.eval.suites or jax.process_count() > 1:
      return {}
    from moejax.data import layout  # pylint: disable=import-outside-toplevel
    from moejax.evaluation import suite_metrics  # pylint: disable=import-outside-toplevel
    per_item = {}
    out = suite_metrics.evaluate_suites(
        state, None, config.data.preset, config.data.data_dir or layout.default_data_dir(),
        graphdef=graphdef, max_items=config.eval.max_items or None,
        batch_size=config.eval.batch_size, sc_samples=config.eval.sc_samples,
        sc_ns=tuple(config.eval.get("sc_ns", ())),
        num_params=counting.count_params(config.model)[0],
        progress=config.train.progress_bar, per_item=per_item)
    if items_dir:
      suite_metrics.save_items(os.path.join(items_dir, suite_metrics.ITEMS_FILENAME), per_item)
    return out

  def counts(self, config: ml_collections.ConfigDict) -> dict:
    return counting.summary(config)
