"""The one MoE feed-forward layer used by every model family.

router -> dispatch (+ experts) -> combine, plus an optional always-on shared-expert branch.
Returns its output and a dict of auxiliary losses and metrics; the model weighs the losses.
Axes: B batch, S sequence, T = B*S tokens, D d_model, E experts, K top-k, F hidden.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import nnx

from moejax.layers.mlp import SwiGLU
from moejax.moe import losses
from moejax.moe.dispatch import dispatch
from moejax.moe.experts import SwiGLUExperts
from moejax.moe.routers import RouterLogits, softmax_top_k


class MoELayer(nnx.Module):
  """Softmax top-k routed SwiGLU experts (Mixtral / Switch style)."""

  def __init__(self, d_model: int, num_experts: int, top_k: int, d_ff: int, *,
               shared_d_ff: int = 0, renormalize: bool = True, strategy: str = "sorted",
               capacity_factor: Optional[float] = None, param_dtype=jnp.float32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    if not 1 <= top_k <= num_experts:
      raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    self.top_k = top_k
    self.renormalize = renormalize
    self.strategy = strategy
    self.capacity_factor = capacity_factor
    self.router = RouterLogits(d_model, num_experts, param_dtype=param_dtype, rngs=rngs)
    self.experts = SwiGLUExperts(num_experts, d_model, d_ff, param_dtype=param_dtype,
                                 dtype=dtype, rngs=rngs)
    self.shared = (SwiGLU(d_model, shared_d_ff, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
                   if shared_d_ff else None)

  def __call__(self, x_BSD):
    batch, seq, d_model = x_BSD.shape
    x_TD = x_BSD.reshape(batch * seq, d_model)
    routing = softmax_top_k(self.router(x_TD), self.top_k, self.renormalize)
    options = {"capacity_factor": self.capacity_factor} if self.strategy == "einsum" else {}
    y_TD, stats = dispatch(self.strategy, x_TD, routing, self.experts, **options)
    y_BSD = y_TD.reshape(batch, seq, d_model)
    if self.shared is not None:
      y_BSD = y_BSD + self.shared(x_BSD)
    aux = {
        "load_balance_loss": losses.load_balance_loss(routing),
        "router_z_loss": losses.router_z_loss(routing),
        **losses.routing_metrics(routing),
        **stats,
    }
    return y_BSD, aux
