"""MoE layer: dispatch strategies against a per-token reference, capacity, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe import losses
from moejax.moe.dispatch import dispatch, sorted_dispatch
from moejax.moe.experts import SwiGLUExperts
from moejax.moe.layer import MoELayer
from moejax.moe.routers import Routing, softmax_top_k

T, D, F = 24, 8, 16


def per_token_reference(x_TD, routing: Routing, experts):
  """y_t = sum_j w_tj * expert_{e_tj}(x_t), one token-choice at a time (groups of one row)."""
  num_tokens, top_k = routing.expert_ids_TK.shape
  token_A = jnp.repeat(jnp.arange(num_tokens), top_k)
  y_A1D = experts(x_TD[token_A][:, None, :], routing.expert_ids_TK.reshape(-1))
  y_TKD = y_A1D.reshape(num_tokens, top_k, -1)
  return jnp.einsum("tkd,tk->td", y_TKD, routing.weights_TK)


def make_routing(expert_ids_TK, seed=0):
  num_experts = 4
  logits = jax.random.normal(jax.random.key(seed), (expert_ids_TK.shape[0], num_experts))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(seed + 1), expert_ids_TK.shape))
  return Routing(expert_ids_TK=jnp.asarray(expert_ids_TK, jnp.int32), weights_TK=weights,
                 probs_TE=jax.nn.softmax(logits), logits_TE=logits)


ROUTINGS = {
    "random_top2": lambda: softmax_top_k(jax.random.normal(jax.random.key(3), (T, 4)), 2),
    "all_on_one_expert": lambda: make_routing(np.stack([np.zeros(T), np.ones(T)], 1)),
    "empty_experts": lambda: make_routing(np.stack([np.full(T, 2), np.full(T, 3)], 1)),
    "k_equals_E": lambda: softmax_top_k(jax.random.normal(jax.random.key(4), (T, 4)), 4),
    "top1": lambda: softmax_top_k(jax.random.normal(jax.random.key(5), (T, 4)), 1),
}


@pytest.fixture(scope="module")
def experts():
  return SwiGLUExperts(4, D, F, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("strategy,options", [("sorted", {}), ("sorted", {"block_rows": 8}),
                                              ("einsum", {"capacity_factor": None})])
@pytest.mark.parametrize("routing_name", sorted(ROUTINGS))
def test_strategy_matches_reference_values_and_gradients(experts, strategy, options,
                                                          routing_name):
  routing = ROUTINGS[routing_name]()
  x_TD = jax.random.normal(jax.random.key(1), (T, D))
  graphdef, weights = nnx.split(experts)

  def loss(x_TD, weights, combine_TK, fn):
    experts_fn = nnx.merge(graphdef, weights)
    routed = routing.replace(weights_TK=combine_TK)
    return jnp.sum(jnp.sin(fn(x_TD, routed, experts_fn)))

  def strategy_fn(x, r, e):
    return dispatch(strategy, x, r, e, **options)[0]

  args = (x_TD, weights, routing.weights_TK)
  # Eager (un-jitted) once, jitted everywhere: eager op-by-op dispatch is slow to run.
  jit = not (routing_name == "random_top2" and strategy == "sorted" and not options)
  grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
  grad_fn = jax.jit(grad_fn, static_argnums=3) if jit else grad_fn
  value_s, grads_s = grad_fn(*args, strategy_fn)
  value_r, grads_r = grad_fn(*args, per_token_reference)
  np.testing.assert_allclose(value_s, value_r, rtol=1e-5, atol=1e-5)
  for g_s, g_r in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g_s, g_r, rtol=1e-4, atol=1e-5)


def test_einsum_capacity_drops_overflow_in_priority_order(experts):
  # Every token picks expert 0 first; capacity ceil(T * 1 * 0.5 / 4) = 3 rows per expert.
  routing = make_routing(np.zeros((T, 1)))
  x_TD = jax.random.normal(jax.random.key(2), (T, D))
  y_TD, stats = dispatch("einsum", x_TD, routing, experts, capacity_factor=0.5)
  reference_TD = per_token_reference(x_TD, routing, experts)
  np.testing.assert_allclose(y_TD[:3], reference_TD[:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(y_TD[3:], 0.0)
  np.testing.assert_allclose(stats["dropped_fraction"], 1 - 3 / T)


def test_sorted_reports_no_drops(experts):
  routing = ROUTINGS["all_on_one_expert"]()
  _, stats = sorted_dispatch(jnp.ones((T, D)), routing, experts)
  assert float(stats["dropped_fraction"]) == 0.0


def test_top_k_routing_picks_largest_and_renormalises():
  logits_TE = jnp.array([[0.0, 3.0, 1.0, 2.0]])
  routing = softmax_top_k(logits_TE, 2, renormalize=True)
  assert routing.expert_ids_TK.tolist() == [[1, 3]]
  np.testing.assert_allclose(routing.weights_TK.sum(), 1.0, rtol=1e-6)
  raw = softmax_top_k(logits_TE, 2, renormalize=False)
  np.testing.assert_allclose(raw.weights_TK, jax.nn.softmax(logits_TE)[0, jnp.array([1, 3])][None])


def test_balance_loss_is_one_when_uniform_and_z_loss_matches_definition():
  num_tokens, num_experts = 8, 4
  ids = np.stack([np.arange(num_tokens) % num_experts, (np.arange(num_tokens) + 1) % 4], 1)
  logits = jnp.zeros((num_tokens, num_experts))
  routing = Routing(expert_ids_TK=jnp.asarray(ids), weights_TK=jnp.full((8, 2), 0.5),
                    probs_TE=jax.nn.softmax(logits), logits_TE=logits)
  np.testing.assert_allclose(losses.load_balance_loss(routing), 1.0, rtol=1e-6)
  np.testing.assert_allclose(losses.router_z_loss(routing), np.log(4.0) ** 2, rtol=1e-6)
  skewed = routing.replace(expert_ids_TK=jnp.zeros_like(routing.expert_ids_TK),
                           probs_TE=jnp.tile(jnp.array([[0.7, 0.1, 0.1, 0.1]]), (8, 1)))
  assert float(losses.load_balance_loss(skewed)) > 2.0


@pytest.mark.parametrize("shared_d_ff", [0, 8])
def test_moe_layer_strategies_agree(shared_d_ff):
  x_BSD = jax.random.normal(jax.random.key(0), (2, 6, D))
  outputs = {}
  for strategy in ("sorted", "einsum"):
    layer = MoELayer(D, 4, 2, F, shared_d_ff=shared_d_ff, strategy=strategy, rngs=nnx.Rngs(0))
    outputs[strategy], aux = layer(x_BSD)
    assert set(aux) >= {"load_balance_loss", "router_z_loss", "dropped_fraction", "max_load"}
  np.testing.assert_allclose(outputs["sorted"], outputs["einsum"], rtol=1e-5, atol=1e-6)


def test_moe_layer_rejects_top_k_above_num_experts():
  with pytest.raises(ValueError, match="top_k=5"):
    MoELayer(D, 4, 5, F, rngs=nnx.Rngs(0))
