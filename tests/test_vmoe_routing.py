"""V-MoE routing (Riquelme et al. 2021): golden loss values on hand-made gates, capacity
rounding, Batch Prioritized Routing against vanilla slot assignment, per-group capacity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.moe import losses, plan
from moejax.moe.router_functions import Routing, noisy_top_k

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])


def _routing(probs_TE, expert_ids_TK=None, weights_TK=None):
  probs_TE = jnp.asarray(probs_TE, jnp.float32)
  if expert_ids_TK is None:
    expert_ids_TK = jnp.argmax(probs_TE, -1)[:, None]
    weights_TK = jnp.max(probs_TE, -1)[:, None]
  return Routing(expert_ids_TK=jnp.asarray(expert_ids_TK, jnp.int32),
                 weights_TK=jnp.asarray(weights_TK, jnp.float32), probs_TE=probs_TE,
                 logits_TE=jnp.log(probs_TE))


def test_importance_loss_golden():
  # Per-expert sums of the gates: 1.5, 1.25, 1.25; mean 4/3, variance 1/72: cv^2 = 1/128.
  assert float(losses.importance_loss(_routing(PROBS))) == pytest.approx(1 / 128, rel=1e-5)
  # Two groups of two tokens: sums (0.8, 0.8, 0.4) -> cv^2 2/25; (0.7, 0.45, 0.85) -> 0.06125.
  expected = (2 / 25 + 0.06125) / 2
  got = float(losses.importance_loss(_routing(PROBS), group_size=2))
  assert got == pytest.approx(expected, rel=1e-5)


def _phi(z):
  return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_load_loss_golden():
  # P(selected) = 1 - Phi((threshold - logit) / std): token 0 [1-Phi(-2), 1-Phi(0)] =
  # [0.97725, 0.5], token 1 [0.5, 0.5]; per-expert sums 1.47725 and 1.0.
  logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])
  threshold = jnp.zeros((2, 1))
  sums = np.array([1 - _phi(-2) + 0.5, 1.0])
  expected = np.var(sums) / np.mean(sums) ** 2
  assert float(losses.noisy_load_loss(logits, threshold, 1.0)) == pytest.approx(expected,
                                                                                 rel=1e-5)
  # std 0.5 doubles the z-scores: [1 - Phi(-4), 0.5].
  sums = np.array([1 - _phi(-4) + 0.5, 1.0])
  expected = np.var(sums) / np.mean(sums) ** 2
  assert float(losses.noisy_load_loss(logits, threshold, 0.5)) == pytest.approx(expected,
                                                                                 rel=1e-5)


def test_noisy_router_weights_come_from_noisy_gates_and_importance_from_clean():
  logits_TE = jax.random.normal(jax.random.key(0), (16, 4))
  key = jax.random.key(1)
  routing, aux = noisy_top_k(logits_TE, 2, key, noise_std=0.5)
  noisy = logits_TE + 0.5 * jax.random.normal(key, logits_TE.shape)
  gates = np.asarray(jax.nn.softmax(noisy, -1))
  ids = np.argsort(-gates, -1)[:, :2]
  np.testing.assert_array_equal(np.asarray(routing.expert_ids_TK), ids)
  np.testing.assert_allclose(np.asarray(routing.weights_TK),
                             np.take_along_axis(gates, ids, -1), rtol=1e-5)  # not renormalised
  np.testing.assert_allclose(np.asarray(routing.probs_TE),
                             np.asarray(jax.nn.softmax(logits_TE, -1)), rtol=1e-6)
  assert float(aux["load_loss"]) > 0


def test_capacity_rounds_up_to_a_multiple_of_four():
  assert plan.capacity(10, 2, 4, 1.05) == 6           # ceil(5.25)
  assert plan.capacity(10, 2, 4, 1.05, multiple_of=4) == 8
  assert plan.capacity(64, 2, 8, 1.05, multiple_of=4) == 20  # ceil(16.8) = 17 -> 20
  assert plan.capacity(3, 1, 8, 0.25, multiple_of=4) == 3    # never more than the tokens


def _kept(routing, capacity, bpr):
  kept, dropped = plan.drop_over_capacity(routing, capacity, bpr)
  return np.asarray(kept.active()), float(dropped)


def test_bpr_against_vanilla_on_three_tokens_three_experts_capacity_two():
  # Choices (expert, gate): t0 (0, .4) (1, .3); t1 (1, .6) (0, .2); t2 (0, .9) (1, .05).
  ids = [[0, 1], [1, 0], [0, 1]]
  gates = [[0.4, 0.3], [0.6, 0.2], [0.9, 0.05]]
  probs = np.array([[0.4, 0.3, 0.3], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05]])
  routing = _routing(probs, ids, gates)
  # Vanilla: first choices in batch order (t0->0, t1->1, t2->0), then second choices:
  # t0->1 fits, t1->0 (expert 0 full) and t2->1 (expert 1 full) are dropped.
  vanilla, dropped = _kept(routing, 2, bpr=False)
  np.testing.assert_array_equal(vanilla, [[True, True], [True, False], [True, False]])
  assert dropped == pytest.approx(2 / 6)
  # BPR: tokens by top gate (t2, t1, t0); first choices t2->0, t1->1, t0->0 fill expert 0;
  # second choices t2->1 fits, t1->0 and t0->1 are dropped.
  bpr, dropped = _kept(routing, 2, bpr=True)
  np.testing.assert_array_equal(bpr, [[True, False], [True, False], [True, True]])
  assert dropped == pytest.approx(2 / 6)
  # Capacity 1: vanilla keeps t0 on expert 0, BPR keeps the confident t2.
  np.testing.assert_array_equal(_kept(routing, 1, False)[0][:, 0], [True, True, False])
  np.testing.assert_array_equal(_kept(routing, 1, True)[0][:, 0], [False, True, True])


def test_per_group_capacity_drops_inside_each_group():
  # Two groups of four tokens, E = 2, k = 1; group 0 sends every token to expert 0.
  ids = np.array([[0], [0], [0], [0], [0], [0], [1], [1]])
  probs = np.where(np.arange(2) == ids, 0.9, 0.1)
  routing = _routing(probs, ids, np.full((8, 1), 0.9))
  kept, dropped = plan.drop_over_group_capacity(routing, 4, 2, False)
  np.testing.assert_array_equal(np.asarray(kept.active())[:, 0],
                                [True, True, False, False, True, True, True, True])
  assert float(dropped) == pytest.approx((0.5 + 0.0) / 2)
  # One group of eight with capacity 4 drops the *last* expert-0 tokens instead.
  whole, _ = plan.drop_over_capacity(routing, 4, False)
  np.testing.assert_array_equal(np.asarray(whole.active())[:, 0],
                                [True, True, True, True, False, False, True, True])
  with pytest.raises(ValueError, match="group_size=3 does not divide"):
    plan.drop_over_group_capacity(routing, 3, 2, False)
