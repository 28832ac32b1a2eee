"""The one MoE feed-forward layer used by every model family.

router -> (top-k schedule) -> dispatch (+ experts) -> combine, plus an optional always-on
shared-expert branch (DiT-MoE, DeepSeekMoE). Returns its output and a dict of scalar auxiliary
losses and metrics; the model weighs the losses with coefficients from its config.

Training-time state (never gradients), held in the model's non-Param state:
  ``RouterBias``  aux-loss-free balancing (``bias_update_rate > 0``). The forward pass only reads
                  it and returns the step's per-expert load as ``aux["expert_load"]`` (the one
                  non-scalar aux entry); the train step then calls ``update_bias`` with it, after
                  the gradient (routing as data: the forward pass mutates nothing).
  ``MoEStep``     the training step, for the top-k schedule and the router noise, set by the
                  train step with ``set_moe_step``.
``model.eval()`` (``deterministic``) routes with the final ``top_k`` and no noise.

Axes: B batch, S sequence, T = B*S tokens, D d_model, E experts, K choices, F hidden.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.mlp import SwiGLU
from moejax.moe import losses
from moejax.moe import routers as routing_lib
from moejax.moe.dispatch import dispatch
from moejax.moe.experts import EXPERTS
from moejax.moe.plan import capacity

TOP_K_ROUTERS = ("softmax_top_k", "sigmoid_top_k", "noisy_top_k", "sinkhorn_top_k")
BIASED_ROUTERS = ("softmax_top_k", "sigmoid_top_k")
EXPERT_LOAD = "expert_load"  # the aux entry [E] (per-layer, not averaged) the bias update reads


class MoEStep(nnx.Variable):
  """The current training step (int32 scalar), set by the train step (``set_moe_step``)."""


def set_moe_step(model_state: nnx.State, step) -> nnx.State:
  """Returns ``model_state`` with every ``MoEStep`` variable set to ``step``.

  Call it on the non-parameter state before the forward pass of each train step (a no-op for
  models without a top-k schedule or router noise).
  """
  def set_step(variable):
    if isinstance(variable, MoEStep):
      return variable.replace(jnp.full(variable.shape, step, jnp.int32))
    return variable

  return jax.tree.map(set_step, model_state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def is_moe_layer(index: int, num_layers: int, every: int = 1,
                 last_n: Optional[int] = None) -> bool:
  """Whether block ``index`` (0-based) is an MoE block: every ``every``-th block (the last of
  each group of ``every``), optionally only among the last ``last_n`` blocks (V-MoE "last-n")."""
  if every <= 0:
    return False
  in_tail = last_n is None or index >= num_layers - last_n
  return in_tail and (index + 1) % every == 0


class MoELayer(nnx.Module):
  """Routed experts with a choice of router, balancing and dispatch.

  Args:
    d_model, num_experts, top_k, d_ff: sizes; ``d_ff`` is each expert's hidden size (a
      fine-grained MoE with granularity G uses the dense hidden / G, Krajewski et al. 2024).
    shared_d_ff: hidden size of the always-on shared SwiGLU branch (0: none); n shared experts
      of hidden F are one branch of hidden n*F (DiT-MoE: 2 shared experts).
    router: one of ``routers.ROUTERS``.
    renormalize: renormalise the top-k weights to sum to 1.
    strategy: a ``dispatch.STRATEGIES`` name.
    capacity_factor: None is dropless; else C = ceil(T*K*cf/E) (for expert choice: the
      tokens each expert takes, default 1.0).
    batch_prioritized: with a capacity, fill capacity by decreasing top gate (V-MoE BPR).
    expert_type: "swiglu" or "gelu".
    bias_update_rate: > 0 enables aux-loss-free balancing (softmax/sigmoid top-k).
    noise_std: router noise std for ``noisy_top_k`` (default 1/E).
    sinkhorn_iterations: Sinkhorn steps for ``sinkhorn_top_k``.
    top_k_schedule: (initial_k, decay_steps): route with ``initial_k`` choices and keep
      ``routers.top_k_at(step, top_k, initial_k, decay_steps)`` of them (``top_k`` in eval).
    balance_per_sequence: compute the balance loss per sequence, then average.
    chunk_size: tokens per chunk for the chunk-level sparsity metric.
    detailed_metrics: add load spread, importance and sparsity metrics to the aux dict.
  """

  def __init__(self, d_model: int, num_experts: int, top_k: int, d_ff: int, *,
               shared_d_ff: int = 0, router: str = "softmax_top_k", renormalize: bool = True,
               strategy: str = "sorted", capacity_factor: Optional[float] = None,
               batch_prioritized: bool = False, expert_type: str = "swiglu",
               bias_update_rate: float = 0.0, noise_std: Optional[float] = None,
               sinkhorn_iterations: int = 8, top_k_schedule: Optional[tuple[int, int]] = None,
               balance_per_sequence: bool = False, chunk_size: int = 8,
               detailed_metrics: bool = False, param_dtype=jnp.float32, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if not 1 <= top_k <= num_experts:
      raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    if router not in routing_lib.ROUTERS:
      raise ValueError(f"router={router!r} is not one of {routing_lib.ROUTERS}")
    if bias_update_rate and router not in BIASED_ROUTERS:
      raise ValueError(f"bias_update_rate needs a router in {BIASED_ROUTERS}, not {router!r}")
    if top_k_schedule is not None:
      if router not in TOP_K_ROUTERS:
        raise ValueError(f"top_k_schedule needs a router in {TOP_K_ROUTERS}, not {router!r}")
      if not top_k <= top_k_schedule[0] <= num_experts:
        raise ValueError(f"top_k_schedule initial k={top_k_schedule[0]} must be in "
                         f"[top_k={top_k}, num_experts={num_experts}]")
    self.num_experts = num_experts
    self.top_k = top_k
    self.router_name = router
    self.renormalize = renormalize
    self.strategy = strategy
    self.capacity_factor = capacity_factor
    self.batch_prioritized = batch_prioritized
    self.bias_update_rate = bias_update_rate
    self.noise_std = noise_std
    self.sinkhorn_iterations = sinkhorn_iterations
    self.top_k_schedule = None if top_k_schedule is None else tuple(top_k_schedule)
    self.balance_per_sequence = balance_per_sequence
    self.chunk_size = chunk_size
    self.detailed_metrics = detailed_metrics
    self.deterministic = False  # ``model.eval()`` sets it: no router noise, the final top_k

    self.router = routing_lib.RouterLogits(d_model, num_experts, param_dtype=param_dtype,
                                           rngs=rngs)
    self.experts = EXPERTS[expert_type](num_experts, d_model, d_ff, param_dtype=param_dtype,
                                        dtype=dtype, rngs=rngs)
    self.shared = (SwiGLU(d_model, shared_d_ff, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
                   if shared_d_ff else None)
    self.router_scale = (routing_lib.ReLURouterScale(num_experts, param_dtype=param_dtype,
                                                   rngs=rngs) if router == "relu" else None)
    self.router_bias = (routing_lib.RouterBias(jnp.zeros((num_experts,), jnp.float32))
                        if bias_update_rate else None)
    needs_step = top_k_schedule is not None or router == "noisy_top_k"
    self.step = MoEStep(jnp.zeros((), jnp.int32)) if needs_step else None
    self.noise_key = (routing_lib.RouterNoiseKey(jax.random.key_data(rngs.params()))
                      if router == "noisy_top_k" else None)

  def _schedule_active(self) -> bool:
    return self.top_k_schedule is not None and not self.deterministic

  def _routed_k(self) -> int:
    """The choice slots: the schedule's initial k in training, else (and in eval) top_k."""
    return self.top_k_schedule[0] if self._schedule_active() else self.top_k

  def route(self, x_TD) -> tuple[routing_lib.Routing, dict]:
    """The routing of tokens ``x_TD`` and the router's own losses/metrics."""
    logits_TE = self.router(x_TD)
    name, k = self.router_name, self._routed_k()
    bias_E = None if self.router_bias is None else self.router_bias[...]
    aux = {}
    if name == "softmax_top_k":
      routing = routing_lib.softmax_top_k(logits_TE, k, self.renormalize, bias_E)
    elif name == "sigmoid_top_k":
      routing = routing_lib.sigmoid_top_k(logits_TE, k, self.renormalize, bias_E)
    elif name == "noisy_top_k":
      key = None
      if not self.deterministic:
        key = jax.random.fold_in(jax.random.wrap_key_data(self.noise_key[...]), self.step[...])
      routing, aux = routing_lib.noisy_top_k(logits_TE, k, key, self.noise_std,
                                             self.renormalize)
      aux["importance_loss"] = losses.importance_loss(routing)
    elif name == "expert_choice":
      routing = routing_lib.expert_choice(logits_TE, self._expert_choice_capacity(len(x_TD)))
    elif name == "sinkhorn_top_k":
      routing = routing_lib.sinkhorn_top_k(logits_TE, k, self.sinkhorn_iterations,
                                           self.renormalize)
    else:  # relu
      routing, aux = routing_lib.relu_routing(logits_TE, self.router_scale)
    if self._schedule_active():
      k_now = routing_lib.top_k_at(self.step[...], self.top_k, *self.top_k_schedule)
      routing = routing_lib.keep_first_choices(routing, k_now, self.renormalize)
      aux["top_k"] = jnp.asarray(k_now, jnp.float32)
    elif self.top_k_schedule is not None:
      aux["top_k"] = jnp.asarray(self.top_k, jnp.float32)
    return routing, aux

  def _expert_choice_capacity(self, num_tokens: int) -> int:
    return capacity(num_tokens, self.top_k, self.num_experts, self.capacity_factor or 1.0)

  def _dispatch_options(self, num_tokens: int) -> dict:
    """Capacity options; the batched rows per expert follow the expected load (the target k)."""
    if self.router_name == "expert_choice":  # every expert has exactly C: nothing overflows
      return {"rows_per_expert": self._expert_choice_capacity(num_tokens)}
    return {"capacity_factor": self.capacity_factor,
            "batch_prioritized": self.batch_prioritized,
            "rows_per_expert": math.ceil(num_tokens * self.top_k / self.num_experts)}

  def __call__(self, x_BSD):
    batch, seq, d_model = x_BSD.shape
    x_TD = x_BSD.reshape(batch * seq, d_model)
    routing, aux = self.route(x_TD)
    y_TD, stats = dispatch(self.strategy, x_TD, routing, self.experts,
                           **self._dispatch_options(batch * seq))
    y_BSD = y_TD.reshape(batch, seq, d_model)
    if self.shared is not None:
      y_BSD = y_BSD + self.shared(x_BSD).astype(y_BSD.dtype)
    group = seq if self.balance_per_sequence else None
    aux = {
        "load_balance_loss": losses.load_balance_loss(routing, group),
        "router_z_loss": losses.router_z_loss(routing),
        **aux,
        **losses.routing_metrics(routing, seq, self.chunk_size, self.detailed_metrics),
        **stats,
    }
    if self.detailed_metrics:
      aux.setdefault("importance_loss", losses.importance_loss(routing))
    if self.router_bias is not None:
      aux[EXPERT_LOAD] = losses.expert_load(routing)
    return y_BSD, aux

  def update_bias(self, load_E):
    """The aux-free balancing step after a training step, from that step's ``aux["expert_load"]``.

    ``load_E`` may carry leading axes matching the bias: a layer stacked by ``nnx.vmap`` has a
    bias [L, E] and the scan over it returns loads [L, E].
    """
    self.router_bias[...] = losses.aux_free_bias_update(self.router_bias[...], load_E,
                                                        self.bias_update_rate)
