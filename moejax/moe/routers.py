"""Routers: nnx modules, one per routing rule, registered by name in ``ROUTERS``.

A router maps tokens x_TD to a ``Routing`` (router_functions.py: which experts each token uses,
with what weight) and to the auxiliary losses and metrics it defines. Each router owns
  its parameters   the logits weight ``w_DE`` (all; ``w_NDE``, one per task, for per-task
                   routing), the one-hot task weight ``w_task_NE``, the ReLU router's gain
                   ``scale_E``;
  its state        the aux-loss-free balancing bias (``RouterBias``), the training step
                   (``MoEStep``: the top-k schedule, the noise) and the noise key;
  its losses       ``losses``: name -> default weight, returned under those names by every call.
The base class ``Router`` holds what routers share: the logits, the bias and its update, the
step and the top-k schedule. A new router is one subclass (``route`` from logits, plus its class
attributes) and one ``ROUTERS`` entry; the MoE layer, the config checks (config.py) and the
train step's loss weights (``MoEConfig.aux_loss_defaults``) pick it up from there.

Task-conditioned routing (``cfg.num_tasks`` > 0; M3ViT, Liang et al. 2022; Edge-MoE, Sarkar et
al. 2023) lives in the base class, so every routing rule can be conditioned: the call takes each
token's task id; "per_task" gives each task its own logits weight, "one_hot" adds a learned
per-task logit row (a one-hot task vector concatenated to the router input, through the same
linear map). ``task_mask_NE`` (``TaskExpertMask``, all ones in training) restricts each task to
a subset of the experts at inference: Edge-MoE's point that a task need only load the experts
it uses.

Training-time state is never a gradient: the forward pass only reads the bias; the train step
calls ``update_bias`` with the step's expert loads after the gradient, and sets the step with
``layer.set_moe_step``. ``model.eval()`` sets ``deterministic``: no noise, the final top_k.

Axes: T tokens, D d_model, E experts, K choice slots per token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.params import param
from moejax.moe import losses
from moejax.moe.router_functions import (Routing, expert_choice, keep_first_choices,
                                         noisy_top_k, relu_routing, sigmoid_top_k, sinkhorn,
                                         sinkhorn_top_k, softmax_top_k, top_k_at)

if TYPE_CHECKING:
  from moejax.moe.config import MoEConfig

__all__ = [  # the routing functions are re-exported: tests and dispatch use them from here
    "ROUTERS", "ExpertChoice", "MoEStep", "NoisyTopK", "ReLURouter", "Router", "RouterBias",
    "RouterNoiseKey", "Routing", "SigmoidTopK", "SinkhornTopK", "SoftmaxTopK", "TaskExpertMask",
    "expert_choice",
    "keep_first_choices", "noisy_top_k", "relu_routing", "sigmoid_top_k", "sinkhorn",
    "sinkhorn_top_k", "softmax_top_k", "top_k_at",
]


class MoEStep(nnx.Variable):
  """The current training step (int32 scalar), set by the train step (``set_moe_step``)."""


class RouterBias(nnx.Variable):
  """Aux-loss-free balancing bias [E] (Wang et al. 2024): non-gradient state, updated from the
  expert loads by ``losses.aux_free_bias_update`` after each training step."""


class TaskExpertMask(nnx.Variable):
  """[N, E] float32, 1 where task n may use expert e (all ones unless an analysis prunes)."""


class RouterNoiseKey(nnx.Variable):
  """A per-layer PRNG key for noisy routing; the noise of step s uses ``fold_in(key, s)``."""


class Router(nnx.Module):
  """The base router: float32 logits x_TD @ w_DE, then ``route`` (the subclass's rule).

  Class attributes (read by config.py before any router is built):
    losses: the auxiliary losses this router returns, name -> default weight.
    supports_bias_balancing: accepts ``bias_update_rate > 0`` (the bias shifts its selection).
    supports_top_k_schedule: accepts ``initial_top_k`` (its choices come sorted by score, so
      the schedule keeps the first k).
    uses_step: reads the training step even without a schedule (the noise).
    omits_layer_losses: layer losses (``layer.LAYER_LOSSES``) that are constant under this
      router, so the layer does not return them (a constant loss trains nothing).

  ``__call__(x_TD, task_T=None) -> (Routing, aux)``; aux holds exactly the ``losses`` names
  (float32 scalars) and the router's metrics (``top_k`` under a schedule). ``task_T`` (int32
  task id per token) is required iff ``cfg.num_tasks`` > 0.
  """
  losses: ClassVar[dict[str, float]] = {}
  supports_bias_balancing: ClassVar[bool] = False
  supports_top_k_schedule: ClassVar[bool] = False
  uses_step: ClassVar[bool] = False
  omits_layer_losses: ClassVar[tuple[str, ...]] = ()

  def __init__(self, d_model: int, cfg: MoEConfig, *, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.deterministic = False  # ``model.eval()`` sets it: no noise, the final top_k
    init = nnx.initializers.normal(d_model ** -0.5)
    num_tasks, num_experts = cfg.num_tasks, cfg.num_experts
    if cfg.task_routing == "per_task":
      self.w_NDE = param(rngs, init, (num_tasks, d_model, num_experts), (None, "embed", None),
                         param_dtype)
    else:
      self.w_DE = param(rngs, init, (d_model, num_experts), ("embed", None), param_dtype)
    self.w_task_NE = (param(rngs, init, (num_tasks, num_experts), (None, None), param_dtype)
                      if cfg.task_routing == "one_hot" else None)
    self.task_mask_NE = (TaskExpertMask(jnp.ones((num_tasks, num_experts), jnp.float32))
                         if num_tasks else None)
    self.bias_E = (RouterBias(jnp.zeros((cfg.num_experts,), jnp.float32))
                   if cfg.bias_update_rate else None)
    needs_step = cfg.top_k_schedule is not None or self.uses_step
    self.step = MoEStep(jnp.zeros((), jnp.int32)) if needs_step else None

  @classmethod
  def num_params(cls, d_model: int, cfg: MoEConfig) -> int:
    """Trainable parameters of one router (for parameter counts without building a model)."""
    tables = cfg.num_tasks if cfg.task_routing == "per_task" else 1
    one_hot = cfg.num_tasks if cfg.task_routing == "one_hot" else 0
    return (tables * d_model + one_hot) * cfg.num_experts

  def logits(self, x_TD, task_T=None):
    """float32 router logits [T, E], conditioned on the tokens' tasks (see the module
    docstring); experts a task is masked from get -1e9."""
    x_TD = x_TD.astype(jnp.float32)
    if self.cfg.num_tasks and task_T is None:
      raise ValueError(f"this router is task-conditioned (num_tasks={self.cfg.num_tasks}): "
                       "pass the task id of every token")
    if self.cfg.task_routing == "per_task":
      logits_TNE = jnp.einsum("td,nde->tne", x_TD, self.w_NDE[...].astype(jnp.float32))
      logits_TE = jnp.take_along_axis(logits_TNE, task_T[:, None, None], axis=1)[:, 0]
    else:
      logits_TE = jnp.einsum("td,de->te", x_TD, self.w_DE[...].astype(jnp.float32))
    if self.w_task_NE is not None:
      logits_TE = logits_TE + self.w_task_NE[...].astype(jnp.float32)[task_T]
    if self.task_mask_NE is not None:
      logits_TE = jnp.where(self.task_mask_NE[...][task_T] > 0, logits_TE, -1e9)
    return logits_TE

  def route(self, logits_TE, top_k: int) -> tuple[Routing, dict[str, jax.Array]]:
    """The routing of float32 ``logits_TE`` with ``top_k`` choice slots (top-k routers), and
    the router's own losses; what a subclass defines."""
    raise NotImplementedError

  def __call__(self, x_TD, task_T=None) -> tuple[Routing, dict[str, jax.Array]]:
    logits_TE = self.logits(x_TD, task_T)
    schedule = self.cfg.top_k_schedule
    scheduled = schedule is not None and not self.deterministic
    # Under a schedule, route with the initial k slots and keep the first k of the step.
    routing, aux = self.route(logits_TE, schedule[0] if scheduled else self.cfg.top_k)
    if schedule is not None:
      k_now = self.cfg.top_k
      if scheduled:
        k_now = top_k_at(self.step[...], self.cfg.top_k, *schedule)
        routing = keep_first_choices(routing, k_now, self.cfg.renormalize)
      aux["top_k"] = jnp.asarray(k_now, jnp.float32)
    return routing, aux

  def bias(self):
    """The balancing bias [E] the selection adds, or None without aux-loss-free balancing."""
    return None if self.bias_E is None else self.bias_E[...]

  def update_bias(self, load_E):
    """The aux-loss-free balancing step from a training step's expert loads; ``load_E`` may
    carry leading axes matching a stacked bias ([L, E] under ``nnx.vmap``)."""
    if self.bias_E is None:
      raise ValueError("update_bias needs bias_update_rate > 0 (a router with a bias)")
    self.bias_E[...] = losses.aux_free_bias_update(self.bias_E[...], load_E,
                                                   self.cfg.bias_update_rate)

  def dispatch_options(self, num_tokens: int) -> dict:
    """Keyword options of ``dispatch`` for ``num_tokens`` tokens: the capacity, its priority,
    and the batched pass's rows per expert, which follow the expected load (the final k)."""
    cfg = self.cfg
    return {"capacity_factor": cfg.capacity_factor,
            "batch_prioritized": cfg.batch_prioritized,
            "rows_per_expert": math.ceil(num_tokens * cfg.top_k / cfg.num_experts)}


class SoftmaxTopK(Router):
  """Softmax, the K most probable (Switch, Fedus et al. 2021; Mixtral); the default."""
  supports_bias_balancing = True
  supports_top_k_schedule = True

  def route(self, logits_TE, top_k):
    return softmax_top_k(logits_TE, top_k, self.cfg.renormalize, self.bias()), {}


class SigmoidTopK(Router):
  """Sigmoid affinities, top-K of affinity + bias (DeepSeek-V3; Wang et al. 2024)."""
  supports_bias_balancing = True
  supports_top_k_schedule = True

  def route(self, logits_TE, top_k):
    return sigmoid_top_k(logits_TE, top_k, self.cfg.renormalize, self.bias()), {}


class NoisyTopK(Router):
  """V-MoE (Riquelme et al. 2021): top-k of softmax(logits + noise), noise std
  ``cfg.noise_std`` (None: 1/E), fresh each step (``fold_in(noise key, step)``), none in eval.

  Its losses are V-MoE's: the importance loss (cv^2 of the experts' summed clean gates) and
  the load loss (cv^2 of their expected loads under the noise), per routing group
  (``cfg.group_size``). V-MoE adds lambda * (their mean) with
  lambda = 0.01, hence 0.005 each.
  """
  losses = {"importance_loss": 0.005, "load_loss": 0.005}
  supports_top_k_schedule = True
  uses_step = True

  def __init__(self, d_model: int, cfg: MoEConfig, *, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    super().__init__(d_model, cfg, param_dtype=param_dtype, rngs=rngs)
    self.noise_key = RouterNoiseKey(jax.random.key_data(rngs.params()))

  def route(self, logits_TE, top_k):
    key = None
    if not self.deterministic:
      key = jax.random.fold_in(jax.random.wrap_key_data(self.noise_key[...]), self.step[...])
    cfg = self.cfg
    routing, aux = noisy_top_k(logits_TE, top_k, key, cfg.noise_std, cfg.renormalize,
                               cfg.group_size)
    aux["importance_loss"] = losses.importance_loss(routing, cfg.group_size)
    return routing, aux


class ExpertChoice(Router):
  """Expert choice (Zhou et al. 2022): each expert takes its top-C tokens, C = ceil(T*k*cf/E)
  with cf = ``cfg.capacity_factor`` (None: 1), so no expert ever overflows.

  Every expert's load is exactly C, so the Switch balance loss E * sum_i f_i P_i is
  sum_i P_i = 1 whatever the weights: the layer omits it (balance by construction).
  """
  omits_layer_losses = ("load_balance_loss",)

  def capacity(self, num_tokens: int) -> int:
    # plan.py imports ``Routing`` from this module: a module-level import would be circular.
    from moejax.moe.plan import capacity  # pylint: disable=import-outside-toplevel
    cfg = self.cfg
    return capacity(num_tokens, cfg.top_k, cfg.num_experts, cfg.capacity_factor or 1.0)

  def route(self, logits_TE, top_k):
    del top_k  # K = E slots: the capacity, not k, bounds the choices
    return expert_choice(logits_TE, self.capacity(logits_TE.shape[0])), {}

  def dispatch_options(self, num_tokens: int) -> dict:
    return {"rows_per_expert": self.capacity(num_tokens)}


class SinkhornTopK(Router):
  """S-BASE (Clark et al. 2022): top-k of a Sinkhorn-balanced plan
  (``cfg.sinkhorn_iterations`` steps), weights from the softmax."""
  supports_top_k_schedule = True

  def route(self, logits_TE, top_k):
    cfg = self.cfg
    return sinkhorn_top_k(logits_TE, top_k, cfg.sinkhorn_iterations, cfg.renormalize), {}


class ReLURouter(Router):
  """BlockFFN (Song et al. 2025): RMSNorm(ReLU(logits)) with a learned gain ``scale_E``; tokens
  use a variable number of experts.

  Its loss is the mean L1 norm of the scores (``router_sparsity_loss``). The default weight,
  1e-3, is ours, not the paper's (BlockFFN trains with its own sparsity objectives): the scores
  have RMS 1 over the E experts, so with a fraction a of them active the loss is E * sqrt(a)
  (5.7 for E = 8, a = 1/2), and 1e-3 puts its term (~6e-3) at the order of the load-balance
  term (1e-2 times a loss near 1).
  """
  losses = {"router_sparsity_loss": 1e-3}

  def __init__(self, d_model: int, cfg: MoEConfig, *, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    super().__init__(d_model, cfg, param_dtype=param_dtype, rngs=rngs)
    # Ones need no key: drawing none keeps the experts' initial values independent of this.
    self.scale_E = nnx.Param(jnp.ones((cfg.num_experts,), param_dtype), out_sharding=(None,),
                             eager_sharding=False)

  @classmethod
  def num_params(cls, d_model: int, cfg: MoEConfig) -> int:
    return super().num_params(d_model, cfg) + cfg.num_experts

  def route(self, logits_TE, top_k):
    del top_k  # K = E slots: the positive scores choose
    return relu_routing(logits_TE, self.scale_E[...])


ROUTERS: dict[str, type[Router]] = {
    "softmax_top_k": SoftmaxTopK,
    "sigmoid_top_k": SigmoidTopK,
    "noisy_top_k": NoisyTopK,
    "expert_choice": ExpertChoice,
    "sinkhorn_top_k": SinkhornTopK,
    "relu": ReLURouter,
}
