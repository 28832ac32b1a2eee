"""Stacked expert weights and their grouped computation. Experts know nothing about routing.

Axes: E experts, G groups of rows, C rows per group, D d_model, F expert hidden size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.params import fan_in_init, param


class SwiGLUExperts(nnx.Module):
  """E independent SwiGLU FFNs with weights stacked on a leading expert axis."""

  def __init__(self, num_experts: int, d_model: int, d_ff: int, *, param_dtype=jnp.float32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    init = fan_in_init((1,))
    self.w_gate_EDF = param(rngs, init, (num_experts, d_model, d_ff), ("expert", "embed", "mlp"),
                            param_dtype)
    self.w_up_EDF = param(rngs, init, (num_experts, d_model, d_ff), ("expert", "embed", "mlp"),
                          param_dtype)
    self.w_down_EFD = param(rngs, init, (num_experts, d_ff, d_model), ("expert", "mlp", "embed"),
                            param_dtype)

  def __call__(self, x_GCD, expert_of_group_G=None):
    """Applies expert ``expert_of_group_G[g]`` to the rows of group g.

    With ``expert_of_group_G=None`` the groups are the experts themselves (G == E).
    """
    dt = self.dtype
    weights = (self.w_gate_EDF[...], self.w_up_EDF[...], self.w_down_EFD[...])
    if expert_of_group_G is not None:
      weights = tuple(jnp.take(w, expert_of_group_G, axis=0) for w in weights)
    w_gate_GDF, w_up_GDF, w_down_GFD = (w.astype(dt) for w in weights)
    x_GCD = x_GCD.astype(dt)
    gate_GCF = jnp.einsum("gcd,gdf->gcf", x_GCD, w_gate_GDF)
    up_GCF = jnp.einsum("gcd,gdf->gcf", x_GCD, w_up_GDF)
    return jnp.einsum("gcf,gfd->gcd", jax.nn.silu(gate_GCF) * up_GCF, w_down_GFD)
