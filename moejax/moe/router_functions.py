"""Routing as pure functions: router logits (plus, for some, a bias, a PRNG key, a capacity or
a gain) -> a ``Routing`` (data, not module state). The router modules of routers.py own the
parameters and state these functions read; tests and benchmarks call the functions directly.

Every function produces the same pytree, so dispatch, losses and metrics never need to know
which router ran:
  softmax_top_k    softmax, K most probable, renormalised or not (Switch, Mixtral, DiT-MoE).
  sigmoid_top_k    sigmoid affinities, selection by affinity + balancing bias (aux-loss-free
                   balancing, Wang et al. 2024; DeepSeek-V3). The bias steers selection only.
  noisy_top_k      TOP_k(softmax(logits + noise)), noise ~ N(0, (1/E)^2) (V-MoE, Riquelme et
                   al. 2021), with the V-MoE load loss.
  expert_choice    each expert takes its top-C tokens (Zhou et al. 2022); tokens use 0..E experts.
  sinkhorn_top_k   top-k of a Sinkhorn-balanced assignment, weights from the softmax
                   (S-BASE, Clark et al. 2022).
  relu_routing     RMSNorm(ReLU(logits)): every positive score is an active expert, so tokens use
                   a variable number of experts (BlockFFN, Song et al. 2025).
A token's choices live on a K axis; a choice can be inactive (``active_TK`` False, weight 0):
expert choice and ReLU routing use K = E slots, the top-k schedule (``top_k_at``) masks the
choices beyond the current k. Inactive choices cost no expert compute in the ``sorted`` dispatch.

Axes: T tokens (batch and sequence flattened), E experts, K choice slots per token, C tokens per
expert (expert choice).
"""

from __future__ import annotations

import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from moejax.moe import losses


@flax.struct.dataclass
class Routing:
  """Which experts each token uses, and with what weight.

  expert_ids_TK: int32 expert of each of a token's K choices (distinct within a token).
  weights_TK: float32 combine weight of each choice (0 where inactive).
  probs_TE: float32 router probabilities over all experts (rows sum to 1, or to 0 for a ReLU
    router token with no active expert), for the balance losses.
  logits_TE: float32 raw router logits, for the z-loss.
  active_TK: bool, whether the choice is used; ``None`` means every choice is.
  max_load: static guarantee that no expert gets more active choices (expert choice: C), which
    lets dispatch size its buffers exactly; ``None``: no guarantee.
  """
  expert_ids_TK: jax.Array
  weights_TK: jax.Array
  probs_TE: jax.Array
  logits_TE: jax.Array
  active_TK: Optional[jax.Array] = None
  max_load: Optional[int] = flax.struct.field(pytree_node=False, default=None)

  @property
  def num_experts(self) -> int:
    return self.probs_TE.shape[-1]

  @property
  def num_choices(self) -> int:
    """K, the static number of choice slots per token."""
    return self.expert_ids_TK.shape[-1]

  def active(self) -> jax.Array:
    """[T, K] bool mask of used choices."""
    if self.active_TK is None:
      return jnp.ones(self.expert_ids_TK.shape, bool)
    return self.active_TK


def _routing_from_scores(scores_TE, probs_TE, logits_TE, top_k: int, renormalize: bool,
                         bias_E=None) -> Routing:
  """Chooses the K largest ``scores + bias`` and weighs them by the unbiased scores."""
  selection_TE = scores_TE if bias_E is None else scores_TE + bias_E.astype(jnp.float32)
  _, expert_ids_TK = jax.lax.top_k(jax.lax.stop_gradient(selection_TE), top_k)
  weights_TK = jnp.take_along_axis(scores_TE, expert_ids_TK, axis=-1)
  if renormalize:
    weights_TK = weights_TK / jnp.maximum(jnp.sum(weights_TK, axis=-1, keepdims=True), 1e-9)
  return Routing(expert_ids_TK=expert_ids_TK.astype(jnp.int32), weights_TK=weights_TK,
                 probs_TE=probs_TE, logits_TE=logits_TE)


def softmax_top_k(logits_TE, top_k: int, renormalize: bool = True, bias_E=None) -> Routing:
  """Softmax over experts, then the K most probable; weights renormalised over the K if asked.

  Mixtral renormalises (equivalently, softmax over the top-K logits); DiT-MoE and V-MoE do not.
  ``bias_E`` (aux-loss-free balancing) shifts the selection only, never the weights.
  """
  logits_TE = logits_TE.astype(jnp.float32)
  probs_TE = jax.nn.softmax(logits_TE, axis=-1)
  return _routing_from_scores(probs_TE, probs_TE, logits_TE, top_k, renormalize, bias_E)


def sigmoid_top_k(logits_TE, top_k: int, renormalize: bool = True, bias_E=None) -> Routing:
  """Sigmoid affinities; top-K of affinity + bias; weights = affinities, renormalised over the
  K (DeepSeek-V3 with aux-loss-free balancing, Wang et al. 2024). ``probs_TE`` are the
  affinities normalised over experts, the quantity DeepSeek-V3's balance loss uses."""
  logits_TE = logits_TE.astype(jnp.float32)
  scores_TE = jax.nn.sigmoid(logits_TE)
  probs_TE = scores_TE / jnp.sum(scores_TE, axis=-1, keepdims=True)
  return _routing_from_scores(scores_TE, probs_TE, logits_TE, top_k, renormalize, bias_E)


def noisy_top_k(logits_TE, top_k: int, key, noise_std: Optional[float] = None,
                renormalize: bool = False, group_size: Optional[int] = None
                ) -> tuple[Routing, dict[str, jax.Array]]:
  """V-MoE router (Riquelme et al. 2021): TOP_k(softmax(logits + eps)), eps ~ N(0, std^2),
  std = 1/E by default; without ``key`` no noise is added (evaluation).

  The choices and their combine weights come from the noisy softmax (not renormalised unless
  asked, as in V-MoE); ``probs_TE`` holds the clean softmax, on which the importance loss and
  the balance metrics are computed. Returns the routing and ``{"load_loss": ...}``, the V-MoE
  load loss: the squared coefficient of variation over experts of P(expert i is selected under
  fresh noise), where selection means beating the k-th largest noisy logit (Shazeer et al.
  2017, V-MoE eq. A.4), per group of ``group_size`` tokens.
  """
  logits_TE = logits_TE.astype(jnp.float32)
  std = 1.0 / logits_TE.shape[-1] if noise_std is None else noise_std
  noisy_TE = logits_TE
  if key is not None:
    noisy_TE = logits_TE + std * jax.random.normal(key, logits_TE.shape, jnp.float32)
  gates_TE = jax.nn.softmax(noisy_TE, axis=-1)
  routing = _routing_from_scores(gates_TE, jax.nn.softmax(logits_TE, axis=-1), logits_TE, top_k,
                                 renormalize)
  threshold_T1 = jax.lax.top_k(noisy_TE, top_k)[0][:, -1:]
  load_loss = losses.noisy_load_loss(logits_TE, threshold_T1, std, group_size)
  return routing, {"load_loss": load_loss}


def expert_choice(logits_TE, capacity: int) -> Routing:
  """Expert-choice routing (Zhou et al. 2022): each expert takes the ``capacity`` tokens with
  the highest softmax probability for it; the combine weight is that probability.

  The result has K = E choice slots (slot j is expert j), active where the expert chose the
  token, so a token uses between 0 and E experts. Choosing looks at every token of the batch,
  so in a causal LM it lets a token's routing depend on later tokens (the known caveat).
  """
  logits_TE = logits_TE.astype(jnp.float32)
  num_tokens, num_experts = logits_TE.shape
  capacity = min(capacity, num_tokens)
  probs_TE = jax.nn.softmax(logits_TE, axis=-1)
  _, token_EC = jax.lax.top_k(jax.lax.stop_gradient(probs_TE).T, capacity)
  expert_EC = jnp.broadcast_to(jnp.arange(num_experts)[:, None], token_EC.shape)
  active_TE = jnp.zeros((num_tokens, num_experts), bool).at[token_EC, expert_EC].set(True)
  expert_ids_TE = jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32), active_TE.shape)
  return Routing(expert_ids_TK=expert_ids_TE, weights_TK=jnp.where(active_TE, probs_TE, 0.0),
                 probs_TE=probs_TE, logits_TE=logits_TE, active_TK=active_TE, max_load=capacity)


def sinkhorn(logits_TE, iterations: int):
  """Log-domain Sinkhorn-Knopp: a [T, E] plan with rows summing to 1 and columns to T/E
  (a balanced transport of tokens to experts); the last step normalises the rows exactly."""
  num_tokens, num_experts = logits_TE.shape
  log_column_mass = math.log(num_tokens / num_experts)

  def step(_, log_p_TE):
    log_p_TE = log_p_TE - jax.nn.logsumexp(log_p_TE, axis=0, keepdims=True) + log_column_mass
    return log_p_TE - jax.nn.logsumexp(log_p_TE, axis=1, keepdims=True)

  log_p_TE = jax.lax.fori_loop(0, iterations, step, logits_TE.astype(jnp.float32))
  return jnp.exp(log_p_TE)


def sinkhorn_top_k(logits_TE, top_k: int, iterations: int = 8,
                   renormalize: bool = True) -> Routing:
  """S-BASE (Clark et al. 2022): choose the top-K experts of the Sinkhorn-balanced plan (no
  gradient flows through the assignment), weigh them by the ordinary softmax probabilities."""
  logits_TE = logits_TE.astype(jnp.float32)
  probs_TE = jax.nn.softmax(logits_TE, axis=-1)
  balanced_TE = sinkhorn(jax.lax.stop_gradient(logits_TE), iterations)
  _, expert_ids_TK = jax.lax.top_k(balanced_TE, top_k)
  weights_TK = jnp.take_along_axis(probs_TE, expert_ids_TK, axis=-1)
  if renormalize:
    weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
  return Routing(expert_ids_TK=expert_ids_TK.astype(jnp.int32), weights_TK=weights_TK,
                 probs_TE=probs_TE, logits_TE=logits_TE)


def relu_routing(logits_TE, scale_E=None, max_experts: Optional[int] = None,
                 eps: float = 1e-6) -> tuple[Routing, dict[str, jax.Array]]:
  """BlockFFN router (Song et al. 2025): scores = RMSNorm(ReLU(logits)) with gain ``scale_E``
  (None: 1); each positive score is an active expert weighted by its score, so tokens use a
  variable number of experts.

  ``max_experts`` caps the choice slots (the largest scores are kept; K = E when ``None``).
  Returns the routing and ``{"router_sparsity_loss": mean_t sum_e score_te}``, the L1 penalty
  that, against the fixed RMS, pushes the scores towards few active experts.
  """
  logits_TE = logits_TE.astype(jnp.float32)
  num_experts = logits_TE.shape[-1]
  relu_TE = jax.nn.relu(logits_TE)
  inv_rms_T1 = jax.lax.rsqrt(jnp.mean(jnp.square(relu_TE), axis=-1, keepdims=True) + eps)
  scores_TE = relu_TE * inv_rms_T1
  if scale_E is not None:
    scores_TE = scores_TE * scale_E.astype(jnp.float32)
  top_k = num_experts if max_experts is None else min(max_experts, num_experts)
  if top_k == num_experts:
    expert_ids_TK = jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32), scores_TE.shape)
    weights_TK = scores_TE
  else:
    _, expert_ids_TK = jax.lax.top_k(jax.lax.stop_gradient(scores_TE), top_k)
    expert_ids_TK = expert_ids_TK.astype(jnp.int32)
    weights_TK = jnp.take_along_axis(scores_TE, expert_ids_TK, axis=-1)
  active_TK = weights_TK > 0
  probs_TE = scores_TE / jnp.maximum(jnp.sum(scores_TE, axis=-1, keepdims=True), 1e-9)
  routing = Routing(expert_ids_TK=expert_ids_TK, weights_TK=jnp.where(active_TK, weights_TK, 0.0),
                    probs_TE=probs_TE, logits_TE=logits_TE, active_TK=active_TK)
  return routing, {"router_sparsity_loss": jnp.mean(jnp.sum(scores_TE, axis=-1))}


def top_k_at(step, final_k: int, initial_k: int, decay_steps: int):
  """Progressive sparsification (Sigma-MoE-Tiny style): k falls linearly (in whole steps) from
  ``initial_k`` at step 0 to ``final_k`` at ``decay_steps`` and stays there.

  Works on Python ints and on traced int scalars (then it returns an int32 scalar).
  """
  if decay_steps <= 0 or initial_k == final_k:
    return final_k
  if isinstance(step, int):
    fraction = min(max(step / decay_steps, 0.0), 1.0)
    return initial_k - math.floor(fraction * (initial_k - final_k) + 1e-9)
  fraction = jnp.clip(jnp.asarray(step, jnp.float32) / decay_steps, 0.0, 1.0)
  drop = jnp.floor(fraction * (initial_k - final_k) + 1e-6).astype(jnp.int32)
  return jnp.int32(initial_k) - drop


def keep_first_choices(routing: Routing, num_active, renormalize: bool) -> Routing:
  """Deactivates the choices beyond the first ``num_active`` (a traced scalar is fine: the
  routing keeps its K slots, so a schedule of k does not recompile). Choices come sorted by
  score from the top-k routers, so this keeps the best ``num_active``."""
  keep_TK = routing.active() & (jnp.arange(routing.num_choices) < num_active)
  weights_TK = jnp.where(keep_TK, routing.weights_TK, 0.0)
  if renormalize:
    weights_TK = weights_TK / jnp.maximum(jnp.sum(weights_TK, axis=-1, keepdims=True), 1e-9)
  return routing.replace(weights_TK=weights_TK, active_TK=keep_TK)
