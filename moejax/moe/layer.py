"""The one MoE feed-forward layer used by every model family, built from a ``MoEConfig``.

The pipeline, for tokens x_TD (the batch and sequence flattened):
  1. router    ``ROUTERS[cfg.router]`` (routers.py): x_TD -> a ``Routing`` (experts and weights
               per token) and the router's own losses/metrics;
  2. dispatch  ``dispatch(cfg.dispatch, ...)`` (moejax/moe/dispatch): permute the token-choices
               to their experts, run ``EXPERTS[cfg.expert_type]`` on them, combine the outputs
               weighted by the routing; the router supplies the capacity options;
     With ``cfg.group_size`` and a capacity, each group of tokens gets its own capacity first
     (plan.drop_over_group_capacity, V-MoE's per-group routing);
     Under a mesh with sharding rules the dispatch runs per device on its own tokens, and with
     an ``expert`` mesh axis the tokens are exchanged with the experts' devices
     (expert_parallel.py; the same strategies run on each device);
  3. shared    plus an always-on shared SwiGLU branch when ``cfg.shared_d_ff > 0`` (DiT-MoE,
               DeepSeekMoE).
A new router is one ``Router`` subclass and one ``ROUTERS`` entry: nothing here names a router.

The aux dict (the model weighs its losses by name, ``MoEConfig.aux_loss_defaults``) holds
  losses       exactly the names of ``cfg.aux_loss_defaults()``, every call, float32 scalars:
               this layer's ``LAYER_LOSSES`` (less the router's ``omits_layer_losses``) and the
               router's ``losses``;
  metrics      under other names: max_load, router_entropy, dropped_fraction, top_k under a
               schedule, the detailed metrics of ``losses.routing_metrics``;
  EXPERT_LOAD  [E], iff ``cfg.bias_update_rate > 0``: the train step hands it to
               ``update_bias`` after the gradient (routing as data: the forward pass mutates
               nothing).

Axes: B batch, S sequence, T = B*S tokens, D d_model, E experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax import sharding
from moejax.layers.mlp import SwiGLU
from moejax.moe import expert_parallel, losses, plan
from moejax.moe.config import MoEConfig
from moejax.moe.dispatch import dispatch
from moejax.moe.experts import EXPERTS
from moejax.moe.routers import ROUTERS, MoEStep

# The layer's own losses with their default weights: the Switch balance loss (Fedus et al.
# 2021) and the ST-MoE router z-loss (Zoph et al. 2022), at the weights those papers and
# Nakamura et al. 2025 use.
LAYER_LOSSES = {"load_balance_loss": 1e-2, "router_z_loss": 1e-3}
EXPERT_LOAD = "expert_load"  # the aux entry [E] (per layer, not averaged) the bias update reads
EXPERT_CHOICES = "expert_choices"  # [T, K] per layer with cfg.return_choices (analyses)
PER_LAYER_AUX = (EXPERT_LOAD, EXPERT_CHOICES)  # kept per layer by the trunk, not averaged

__all__ = ["EXPERT_CHOICES", "EXPERT_LOAD", "LAYER_LOSSES", "MoELayer", "MoEStep", "PER_LAYER_AUX",
           "set_moe_step"]


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


class MoELayer(nnx.Module):
  """Routed experts (and an optional shared branch) configured by ``cfg`` (see the module
  docstring); ``__call__(x_BSD) -> (y_BSD, aux)``.

  Keys are drawn in the order router (its logits weight first), experts, shared branch; a
  router drawing more (the noisy router's noise key) shifts the experts' and shared draws.
  ``cfg`` is checked here too, so a hand-built config fails with the field it gets wrong.
  """

  def __init__(self, d_model: int, cfg: MoEConfig, *, param_dtype=jnp.float32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    cfg.check()
    self.cfg = cfg
    self.router = ROUTERS[cfg.router](d_model, cfg, param_dtype=param_dtype, rngs=rngs)
    self.experts = EXPERTS[cfg.expert_type](cfg.num_experts, d_model, cfg.d_ff,
                                            param_dtype=param_dtype, dtype=dtype, rngs=rngs)
    self.shared = (SwiGLU(d_model, cfg.shared_d_ff, param_dtype=param_dtype, dtype=dtype,
                          rngs=rngs) if cfg.shared_d_ff else None)

  def __call__(self, x_BSD, task_B=None):
    """``task_B``: int32 task id per row, for task-conditioned routing (``cfg.num_tasks``)."""
    cfg = self.cfg
    batch, seq, d_model = x_BSD.shape
    x_TD = x_BSD.reshape(batch * seq, d_model)
    task_T = None if task_B is None else jnp.repeat(task_B, seq)
    routing, router_aux = self.router(x_TD, task_T)
    interpreted = cfg.dispatch == "pallas" and sharding.platform() == "cpu"
    sharded = expert_parallel.sharded_dispatch(self._dispatch_local, x_BSD, routing,
                                               self.experts, num_experts=cfg.num_experts,
                                               check_vma=not interpreted)
    if sharded is None:
      y_TD, stats, kept_TK = self._dispatch_local(x_TD, routing, self.experts, (), 1)
      y_BSD = y_TD.reshape(batch, seq, d_model)
    else:
      y_BSD, stats, kept_TK = sharded
    if self.shared is not None:
      y_BSD = y_BSD + self.shared(x_BSD).astype(y_BSD.dtype)
    group = seq if cfg.balance_per_sequence else None
    layer_losses = {"load_balance_loss": losses.load_balance_loss(routing, group),
                    "router_z_loss": losses.router_z_loss(routing)}
    aux = {
        **{name: layer_losses[name] for name in LAYER_LOSSES
           if name not in self.router.omits_layer_losses},
        **router_aux,
        **losses.routing_metrics(routing, seq, cfg.chunk_size, cfg.detailed_metrics),
        **stats,
    }
    if cfg.bias_update_rate:
      aux[EXPERT_LOAD] = losses.expert_load(routing)
    if cfg.return_choices:
      aux[EXPERT_CHOICES] = jnp.where(kept_TK, routing.expert_ids_TK, -1)
    return y_BSD, aux

  def _dispatch_local(self, x_TD, routing, experts, expert_axes, num_expert_devices):
    """(y_TD, stats, kept_TK) of these tokens: on one device all of them, under a mesh one
    device's (expert_parallel.py); ``experts`` are then its share on ``expert_axes``."""
    cfg = self.cfg
    num_tokens = x_TD.shape[0]
    if cfg.group_size is not None and num_tokens % cfg.group_size:
      raise ValueError(f"config.model.moe.group_size={cfg.group_size} does not divide the "
                       f"{num_tokens} tokens of a device's share of this batch")
    options = self.router.dispatch_options(num_tokens)
    kept, group_dropped = routing, None
    if cfg.group_size is not None and cfg.capacity_factor is not None:
      # Per-group capacity (V-MoE): drop here, then dispatch what is left without a limit.
      rows = plan.capacity(cfg.group_size, cfg.top_k, cfg.num_experts, cfg.capacity_factor,
                           cfg.capacity_multiple)
      kept, group_dropped = plan.drop_over_group_capacity(routing, cfg.group_size, rows,
                                                          cfg.batch_prioritized)
      options["capacity_factor"] = None
    if num_expert_devices > 1:
      dense = cfg.ep_exchange == "dense" or (cfg.ep_exchange == "auto"
                                             and sharding.platform() == "cpu")
      y_TD, stats = expert_parallel.ep_dispatch(
          cfg.dispatch, x_TD, kept, experts, axis=expert_axes, num_devices=num_expert_devices,
          capacity_factor=options.get("capacity_factor"),
          batch_prioritized=options.get("batch_prioritized", False), dense=dense)
    else:
      y_TD, stats = dispatch(cfg.dispatch, x_TD, kept, experts, **options)
    if group_dropped is not None:
      stats["dropped_fraction"] = group_dropped
    return y_TD, stats, kept.active()

  def update_bias(self, load_E):
    """The aux-free balancing step after a training step, from that step's ``aux["expert_load"]``.

    ``load_E`` may carry leading axes matching the bias: a layer stacked by ``nnx.vmap`` has a
    bias [L, E] and the scan over it returns loads [L, E].
    """
    self.router.update_bias(load_E)
