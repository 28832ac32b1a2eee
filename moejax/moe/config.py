"""The MoE layer's configuration: one config section, one dataclass, one home for defaults and
checks.

A run config keeps it at ``config.model.moe`` (``config_section()`` gives the defaults); the
model reads it once with ``MoEConfig.from_config`` and hands the frozen dataclass to every MoE
layer. Field names are the layer's own names, so nothing is renamed on the way, and
``--config.model.moe.router=noisy_top_k`` reaches the layer as ``cfg.router``.

Fields:
  num_experts, top_k  E routed experts, K of them per token.
  d_ff                each expert's hidden size (a fine-grained MoE of granularity G uses the
                      dense hidden / G, Krajewski et al. 2024; ``granularity`` records G).
  expert_type         a ``moejax.moe.experts.EXPERTS`` name: "swiglu" (LM, DiT-MoE) or "gelu"
                      (ViT).
  shared_d_ff         hidden size of an always-on shared SwiGLU branch (0: none); n shared
                      experts of hidden F are one branch of hidden n*F (DiT-MoE, DeepSeekMoE).
  router              a ``moejax.moe.routers.ROUTERS`` name; ``renormalize``,
                      ``bias_update_rate`` (aux-loss-free balancing), ``noise_std`` (noisy
                      top-k; None: 1/E) and ``sinkhorn_iterations`` are router options.
  initial_top_k, top_k_decay_steps
                      a top-k schedule: k falls from ``initial_top_k`` to ``top_k``.
  dispatch            a ``moejax.moe.dispatch.STRATEGIES`` name; ``capacity_factor`` (None:
                      dropless) and ``batch_prioritized`` (V-MoE BPR) size and fill capacity.
                      The default ``sorted`` is the CPU choice; on TPU and GPU pass
                      ``dispatch=pallas`` (the grouped matmul kernels, docs/kernels.md). The
                      default does not follow the backend: a config means the same program
                      wherever it is read, and the kernels are checked on CPU (interpreted,
                      cross-lowered, Mosaic-compiled) but not yet timed on hardware.
  ep_exchange         how tokens travel between devices under expert parallelism (a mesh axis
                      ``expert`` > 1, moejax/moe/expert_parallel.py): "ragged"
                      (``lax.ragged_all_to_all``: TPU, GPU), "dense" (a padded dense all-to-all,
                      exact, P times the send buffer; the only one XLA:CPU runs), or "auto"
                      (ragged unless the default backend is the CPU; set "ragged" to compile for
                      a TPU topology from a CPU host). With a capacity factor the chunks are
                      bounded by the capacity, so "dense" costs no padding beyond it.
                      Under a mesh the dispatch runs per data shard: a capacity (without
                      ``group_size``) is per device's tokens, not per global batch.
  group_size, capacity_multiple
                      per-group routing (V-MoE): the tokens are cut into groups of
                      ``group_size`` consecutive tokens (e.g. the patches of a few images);
                      each group has its own capacity, ceil(S*k*cf/E) rounded up to a
                      multiple of ``capacity_multiple`` (V-MoE: 4), and the V-MoE losses are
                      averaged over groups. None: the whole batch is one group.
  num_tasks, task_routing
                      task-conditioned routing (M3ViT, Liang et al. 2022; Edge-MoE, Sarkar et
                      al. 2023): with ``num_tasks`` > 0 the router reads each token's task id;
                      "shared" = one router for all tasks, "per_task" = one router weight per
                      task, "one_hot" = a one-hot task vector concatenated to the router input.
                      Experts are shared by all tasks either way.
  balance_per_sequence, detailed_metrics, chunk_size
                      loss and metric options (moejax/moe/losses.py).
  return_choices      analysis: the layer's aux also holds ``expert_choices`` [T, K] (the
                      expert of every kept choice, -1 where inactive or dropped).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import ml_collections

from moejax.errors import require

TASK_ROUTING = ("shared", "per_task", "one_hot")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """What one MoE layer needs to know (see the module docstring)."""
  num_experts: int = 8
  top_k: int = 2
  d_ff: int = 1024
  granularity: int = 1
  expert_type: str = "swiglu"
  shared_d_ff: int = 0
  router: str = "softmax_top_k"
  renormalize: bool = True
  bias_update_rate: float = 0.0
  noise_std: Optional[float] = None
  sinkhorn_iterations: int = 8
  initial_top_k: Optional[int] = None
  top_k_decay_steps: int = 0
  dispatch: str = "sorted"
  capacity_factor: Optional[float] = None
  batch_prioritized: bool = False
  ep_exchange: str = "auto"
  group_size: Optional[int] = None
  capacity_multiple: int = 1
  num_tasks: int = 0
  task_routing: str = "shared"
  balance_per_sequence: bool = False
  detailed_metrics: bool = False
  chunk_size: int = 8
  return_choices: bool = False

  @classmethod
  def from_config(cls, section: Mapping[str, Any],
                  prefix: str = "config.model.moe") -> "MoEConfig":
    """The checked dataclass of a config section; errors name ``prefix.field``."""
    if isinstance(section, ml_collections.ConfigDict):
      section = section.to_dict()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    require(not unknown, f"{prefix} has unknown fields {unknown}; known: {sorted(names)}")
    cfg = cls(**section)
    cfg.check(prefix)
    return cfg

  def check(self, prefix: str = "config.model.moe") -> None:
    """Raises ``ConfigError`` naming the first impossible field."""
    # Registries are imported here: they import this module.
    from moejax.moe.dispatch import STRATEGIES  # pylint: disable=import-outside-toplevel
    from moejax.moe.experts import EXPERTS  # pylint: disable=import-outside-toplevel
    from moejax.moe.routers import ROUTERS  # pylint: disable=import-outside-toplevel
    p = prefix
    require(self.num_experts >= 1, f"{p}.num_experts={self.num_experts} must be >= 1")
    require(1 <= self.top_k <= self.num_experts,
            f"{p}.top_k={self.top_k} must be in [1, {p}.num_experts={self.num_experts}]")
    require(self.d_ff > 0, f"{p}.d_ff={self.d_ff} must be positive")
    require(self.granularity >= 1, f"{p}.granularity={self.granularity} must be >= 1")
    require(self.shared_d_ff >= 0, f"{p}.shared_d_ff={self.shared_d_ff} must be >= 0")
    require(self.expert_type in EXPERTS,
            f"{p}.expert_type={self.expert_type!r} is not one of {sorted(EXPERTS)}")
    require(self.dispatch in STRATEGIES,
            f"{p}.dispatch={self.dispatch!r} is not one of {sorted(STRATEGIES)}")
    require(self.capacity_factor is None or self.capacity_factor > 0,
            f"{p}.capacity_factor={self.capacity_factor} must be > 0 or None (dropless)")
    from moejax.moe.expert_parallel import EP_EXCHANGES  # pylint: disable=import-outside-toplevel
    require(self.ep_exchange in EP_EXCHANGES,
            f"{p}.ep_exchange={self.ep_exchange!r} is not one of {EP_EXCHANGES}")
    require(self.group_size is None or self.group_size >= 1,
            f"{p}.group_size={self.group_size} must be >= 1 or None (one group)")
    require(self.capacity_multiple >= 1,
            f"{p}.capacity_multiple={self.capacity_multiple} must be >= 1")
    require(self.num_tasks >= 0, f"{p}.num_tasks={self.num_tasks} must be >= 0")
    require(self.task_routing in TASK_ROUTING,
            f"{p}.task_routing={self.task_routing!r} is not one of {TASK_ROUTING}")
    require(self.task_routing == "shared" or self.num_tasks >= 1,
            f"{p}.task_routing={self.task_routing!r} needs {p}.num_tasks >= 1")
    require(self.chunk_size >= 1, f"{p}.chunk_size={self.chunk_size} must be >= 1")
    require(self.router in ROUTERS, f"{p}.router={self.router!r} is not one of {list(ROUTERS)}")
    router = ROUTERS[self.router]
    require(self.bias_update_rate >= 0,
            f"{p}.bias_update_rate={self.bias_update_rate} must be >= 0")
    biased = [name for name, r in ROUTERS.items() if r.supports_bias_balancing]
    require(not self.bias_update_rate or router.supports_bias_balancing,
            f"{p}.bias_update_rate={self.bias_update_rate} needs {p}.router in {biased}, "
            f"not {self.router!r}")
    require(self.noise_std is None or self.noise_std > 0,
            f"{p}.noise_std={self.noise_std} must be > 0 or None")
    require(self.sinkhorn_iterations >= 1,
            f"{p}.sinkhorn_iterations={self.sinkhorn_iterations} must be >= 1")
    if self.initial_top_k is not None:
      require(self.top_k <= self.initial_top_k <= self.num_experts,
              f"{p}.initial_top_k={self.initial_top_k} must be in [{p}.top_k={self.top_k}, "
              f"{p}.num_experts={self.num_experts}]")
      scheduled = [name for name, r in ROUTERS.items() if r.supports_top_k_schedule]
      require(router.supports_top_k_schedule,
              f"{p}.initial_top_k needs {p}.router in {scheduled}, not {self.router!r}")
      require(self.top_k_decay_steps >= 0,
              f"{p}.top_k_decay_steps={self.top_k_decay_steps} must be >= 0")
      require(self.top_k_decay_steps > 0 or self.initial_top_k == self.top_k,
              f"{p}.top_k_decay_steps={self.top_k_decay_steps} must be > 0 for a schedule "
              f"from {p}.initial_top_k={self.initial_top_k} to {p}.top_k={self.top_k}")
    if self.dispatch == "pallas":
      from kernels_pallas import grouped_matmul  # pylint: disable=import-outside-toplevel
      require(grouped_matmul.AVAILABLE,
              f"{p}.dispatch='pallas' needs the kernels_pallas grouped matmul, which is not "
              "available here (kernels_pallas.grouped_matmul.AVAILABLE is False)")

  @property
  def top_k_schedule(self) -> Optional[tuple[int, int]]:
    """(initial k, decay steps), or None without a schedule."""
    if self.initial_top_k is None:
      return None
    return self.initial_top_k, self.top_k_decay_steps

  def aux_loss_defaults(self) -> dict[str, float]:
    """The auxiliary losses an MoE layer of this config returns, with their default weights:
    the layer's own (load balance, router z) but those its router omits (a constant loss
    trains nothing: expert choice is balanced by construction), and those its router defines."""
    from moejax.moe.layer import LAYER_LOSSES  # pylint: disable=import-outside-toplevel
    from moejax.moe.routers import ROUTERS  # pylint: disable=import-outside-toplevel
    router = ROUTERS[self.router]
    layer = {name: w for name, w in LAYER_LOSSES.items() if name not in router.omits_layer_losses}
    return {**layer, **router.losses}


def config_section(**overrides) -> ml_collections.ConfigDict:
  """The defaults as a ConfigDict (optional fields typed, so overrides parse), updated with
  ``overrides`` (values or lazy references)."""
  section = ml_collections.ConfigDict()
  for field in dataclasses.fields(MoEConfig):
    default = field.default
    if default is None:
      kind = {"noise_std": float, "initial_top_k": int, "capacity_factor": float,
              "group_size": int}[field.name]
      default = ml_collections.FieldReference(None, field_type=kind)
    section[field.name] = default
  section.update(overrides)
  return section


def all_aux_loss_names() -> list[str]:
  """Every auxiliary loss name the MoE layer or a registered router can return."""
  from moejax.moe.layer import LAYER_LOSSES  # pylint: disable=import-outside-toplevel
  from moejax.moe.routers import ROUTERS  # pylint: disable=import-outside-toplevel
  names = list(LAYER_LOSSES)
  for router in ROUTERS.values():
    names += [name for name in router.losses if name not in names]
  return names
