"""Routers: token representations -> a ``Routing`` (data, not module state).

Axes: T tokens (batch and sequence flattened), D d_model, E experts, K experts per token.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.params import param


@flax.struct.dataclass
class Routing:
  """Which experts each token uses, and with what weight.

  expert_ids_TK: int32 expert index of each of a token's K choices (distinct per token).
  weights_TK: combine weight of each choice (float32).
  probs_TE: router probabilities over all experts (float32), for balance losses.
  logits_TE: raw router logits (float32), for the z-loss.
  """
  expert_ids_TK: jax.Array
  weights_TK: jax.Array
  probs_TE: jax.Array
  logits_TE: jax.Array

  @property
  def num_experts(self) -> int:
    return self.probs_TE.shape[-1]


class RouterLogits(nnx.Module):
  """A linear map D -> E computed in float32 (routing is precision sensitive)."""

  def __init__(self, d_model: int, num_experts: int, *, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.w_DE = param(rngs, nnx.initializers.normal(d_model ** -0.5), (d_model, num_experts),
                      ("embed", None), param_dtype)

  def __call__(self, x_TD):
    return jnp.einsum("td,de->te", x_TD.astype(jnp.float32), self.w_DE[...].astype(jnp.float32))


def softmax_top_k(logits_TE, top_k: int, renormalize: bool = True) -> Routing:
  """Softmax over experts, then the K most probable; weights renormalised over the K if asked.

  Mixtral renormalises (equivalently, softmax over the top-K logits); DiT-MoE and V-MoE do not.
  """
  logits_TE = logits_TE.astype(jnp.float32)
  probs_TE = jax.nn.softmax(logits_TE, axis=-1)
  weights_TK, expert_ids_TK = jax.lax.top_k(probs_TE, top_k)
  if renormalize:
    weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
  return Routing(expert_ids_TK=expert_ids_TK.astype(jnp.int32), weights_TK=weights_TK,
                 probs_TE=probs_TE, logits_TE=logits_TE)
