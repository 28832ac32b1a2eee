"""Batched autoregressive generation with a key/value cache, jitted with static shapes.

One jitted program per (batch rows, prompt bucket, ``max_new_tokens``): prefill the
left-padded prompts in one ``MoELM.decode`` call, then a ``lax.while_loop`` feeds one token per
step until every row has produced EOS or ``max_new_tokens`` tokens. Rows that finished emit PAD.

Greedy decoding (``temperature=0``) takes the argmax; sampling (the same program: the
temperature is an argument, not a constant) draws from
``softmax(logits / temperature)`` with one key per row, folded with the step number, so a row's
sample does not depend on which other rows share its batch. ``vocab_limit`` masks ids the
tokenizer cannot decode (a model's vocabulary may be padded beyond the tokenizer's).

  tokens = generate(model, prompts, max_new_tokens=32)               # greedy
  keys = item_keys(seed=0, uids=[...], num_samples=8)                # per item and sample
  tokens = generate(model, prompts_repeated, max_new_tokens=32, temperature=0.7, keys=keys)

Axes: B batch, P prompt bucket, N new tokens, V vocabulary.
"""

from __future__ import annotations

import functools
import zlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.data import tokenizer as tokenizer_lib
from moejax.evaluation import batching
from moejax.evaluation import model_io


def _next_tokens(logits_BV, keys_B, step, temperature, vocab_limit: int | None):
  """Greedy (temperature 0) or sampled next tokens [B]."""
  if vocab_limit is not None and vocab_limit < logits_BV.shape[-1]:
    logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit, logits_BV, -jnp.inf)
  greedy_B = jnp.argmax(logits_BV, axis=-1)
  step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
  scaled_BV = logits_BV / jnp.maximum(temperature, 1e-6)
  sampled_B = jax.vmap(jax.random.categorical)(step_keys_B, scaled_BV)
  return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "vocab_limit"))
def generate_batch(graphdef: nnx.GraphDef, states, prompt_BP, start_B, keys_B, temperature=0.0,
                   *, max_new_tokens: int, vocab_limit: int | None = None):
  """Continues left-padded prompts (see ``MoELM.decode``).

  Args:
    graphdef, states: the model, as from ``model_io.split``.
    prompt_BP: int32 prompts, right-aligned; ``start_B`` is each row's first real token.
    start_B: int32 [B].
    keys_B: one PRNG key per row (unused when ``temperature`` is 0).
    temperature: float32 scalar, 0 for greedy decoding.
    max_new_tokens: most tokens generated per row.
    vocab_limit: ids >= this are never generated (None: no limit).

  Returns:
    int32 [B, max_new_tokens]: generated ids; EOS ends a row, PAD follows it.
  """
  model = nnx.merge(graphdef, *states)
  rows, prompt_len = prompt_BP.shape
  cache = model.init_cache(rows, prompt_len + max_new_tokens, start_B)
  logits_BPV, cache = model.decode(prompt_BP, cache)

  # The states ride in the loop's carry: a module must be merged from values of the trace it
  # runs in (nnx refuses variables captured from the enclosing jit trace).
  def unfinished(carry):
    step, _, _, _, done_B, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done_B)

  def step_fn(carry):
    step, tokens_BN, logits_BV, cache, done_B, states = carry
    next_B = _next_tokens(logits_BV, keys_B, step, temperature, vocab_limit)
    next_B = jnp.where(done_B, tokenizer_lib.PAD_ID, next_B)
    tokens_BN = jax.lax.dynamic_update_slice_in_dim(tokens_BN, next_B[:, None], step, 1)
    done_B = done_B | (next_B == tokenizer_lib.EOS_ID)
    logits_B1V, cache = nnx.merge(graphdef, *states).decode(next_B[:, None], cache)
    return step + 1, tokens_BN, logits_B1V[:, 0], cache, done_B, states

  tokens_BN = jnp.full((rows, max_new_tokens), tokenizer_lib.PAD_ID, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), tokens_BN, logits_BPV[:, -1], cache,
           jnp.zeros((rows,), jnp.bool_), states)
  return jax.lax.while_loop(unfinished, step_fn, carry)[1]


def item_keys(seed: int, uids: Sequence[str], num_samples: int = 1) -> jax.Array:
  """Keys [len(uids) * num_samples], item-major: sample j of item i depends on (seed, uid, j).

  The uid enters through its CRC-32, so items keep their keys in any subset or order.
  """
  base = jax.random.key(seed)
  keys = []
  for uid in uids:
    item_key = jax.random.fold_in(base, zlib.crc32(uid.encode()) & 0x7FFFFFFF)
    keys.append(jax.random.split(item_key, num_samples))
  return jnp.concatenate(keys) if keys else jax.random.split(base, 0)


def truncate_at_eos(ids: Sequence[int]) -> list[int]:
  """``ids`` up to and including the first EOS (all of them when there is none)."""
  ids = [int(i) for i in ids]
  return ids[:ids.index(tokenizer_lib.EOS_ID) + 1] if tokenizer_lib.EOS_ID in ids else ids


def generate(model: model_io.Model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             graphdef: nnx.GraphDef | None = None, temperature: float = 0.0,
             keys: jax.Array | None = None, batch_size: int = 64,
             vocab_limit: int | None = None, min_bucket: int = 16,
             progress: Callable[[int], None] | None = None) -> list[list[int]]:
  """Generated ids of each prompt (``[PAD] + encode(prompt)``), up to and including EOS.

  Args:
    model: see ``model_io``; ``graphdef`` is needed for a TrainState.
    prompts: token ids, any lengths.
    max_new_tokens: most tokens generated per prompt.
    temperature: 0 for greedy decoding; else ``keys`` (one per prompt) are required.
    keys: PRNG keys [len(prompts)] (``item_keys``).
    batch_size: rows per jitted call.
    vocab_limit: ids >= this are never generated (e.g. the tokenizer's vocabulary size).
    min_bucket: shortest prompt bucket (fewer, longer buckets mean fewer compilations).
    progress: called with the number of prompts finished after each batch.
  """
  graphdef, states = model_io.split(model, graphdef)
  if temperature != 0.0 and keys is None:
    raise ValueError("Sampling (temperature > 0) needs one key per prompt")
  if keys is None:
    keys = jax.random.split(jax.random.key(0), len(prompts))
  if len(keys) != len(prompts):
    raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
  out: list[list[int]] = [[] for _ in prompts]
  for index_B in batching.length_batches([len(p) for p in prompts], batch_size):
    length = batching.bucket_length(max(len(prompts[i]) for i in index_B), min_bucket)
    prompt_BP, start_B = batching.left_pad([prompts[i] for i in index_B], batch_size, length)
    padded_index_B = np.pad(index_B, (0, batch_size - len(index_B)), constant_values=index_B[0])
    tokens_BN = generate_batch(graphdef, states, jnp.asarray(prompt_BP), jnp.asarray(start_B),
                               keys[jnp.asarray(padded_index_B)], jnp.float32(temperature),
                               max_new_tokens=max_new_tokens, vocab_limit=vocab_limit)
    tokens_BN = np.asarray(tokens_BN)
    for b, i in enumerate(index_B):
      out[i] = truncate_at_eos(tokens_BN[b])
    if progress is not None:
      progress(len(index_B))
  return out
