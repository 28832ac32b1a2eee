"""MoE dispatch: every strategy against a per-token loop in values and gradients, capacity and
priority, the dispatch plan, and the MoE layer's strategy agreement."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe import plan as planning
from moejax.moe.dispatch import dispatch
from moejax.moe.experts import GeluExperts, SwiGLUExperts, batched_matmul, expert_matmul
from moejax.moe.routers import Routing, expert_choice, softmax_top_k

# Correctness-only compiles: the unoptimised XLA backend compiles these tiny programs faster.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
T, D, F, E = 24, 8, 16, 4


def build(make):
  """``make()`` (an nnx module) initialised under jit: eager init compiles op by op."""
  graphdef = nnx.split(nnx.eval_shape(make))[0]
  return nnx.merge(graphdef, fast_jit(lambda: nnx.state(make()))())


def per_token_reference(x_TD, routing: Routing, experts):
  """y_t = sum_j w_tj * expert_{e_tj}(x_t) over active choices, one token-choice at a time."""
  num_tokens, num_choices = routing.expert_ids_TK.shape
  expert_A = routing.expert_ids_TK.reshape(-1)

  def per_row_matmul(x_AI, w_EIO):  # row a times the weights of its own expert
    return jnp.einsum("ai,aio->ao", x_AI, w_EIO[expert_A])

  y_AD = experts(jnp.repeat(x_TD, num_choices, axis=0), per_row_matmul)
  weights_TK = jnp.where(routing.active(), routing.weights_TK, 0.0)
  return jnp.einsum("tkd,tk->td", y_AD.reshape(num_tokens, num_choices, -1), weights_TK)


def make_routing(expert_ids_TK, active_TK=None, seed=0):
  expert_ids_TK = jnp.asarray(expert_ids_TK, jnp.int32)
  logits = jax.random.normal(jax.random.key(seed), (expert_ids_TK.shape[0], E))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(seed + 1), expert_ids_TK.shape))
  return Routing(expert_ids_TK=expert_ids_TK, weights_TK=weights,
                 probs_TE=jax.nn.softmax(logits), logits_TE=logits, active_TK=active_TK)


def _logits(seed):
  return jax.random.normal(jax.random.key(seed), (T, E))


ROUTINGS = {
    "random_top2": lambda: softmax_top_k(_logits(3), 2),
    "all_on_one_expert": lambda: make_routing(np.stack([np.zeros(T), np.ones(T)], 1)),
    "empty_experts": lambda: make_routing(np.stack([np.full(T, 2), np.full(T, 3)], 1)),
    "k_equals_E": lambda: softmax_top_k(_logits(4), E),
    "top1": lambda: softmax_top_k(_logits(5), 1),
    "masked": lambda: softmax_top_k(_logits(6), 3).replace(
        active_TK=jax.random.bernoulli(jax.random.key(7), 0.6, (T, 3))),
    "expert_choice": lambda: expert_choice(_logits(8), capacity=9),
}
CASES = (
    [("sorted", {}, name) for name in ROUTINGS]
    + [("sorted", {"block_rows": 1}, "all_on_one_expert"),  # bulk and remainder blocks
       ("sorted", {"rows_per_expert": 0}, "masked")]         # everything in the block pass
    + [("einsum", {}, name) for name in ("random_top2", "k_equals_E", "masked")]
    + [("ragged_dot", {}, name) for name in ("random_top2", "masked")]
)


@pytest.fixture(scope="module")
def experts():
  return build(lambda: SwiGLUExperts(E, D, F, rngs=nnx.Rngs(0)))


def _loss_and_grads(experts, routing, strategy_fn):
  graphdef, weights = nnx.split(experts)

  def loss(x_TD, weights, combine_TK):
    routed = routing.replace(weights_TK=combine_TK)
    return jnp.sum(jnp.sin(strategy_fn(x_TD, routed, nnx.merge(graphdef, weights))))

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
  x_TD = jax.random.normal(jax.random.key(1), (T, D))
  return fast_jit(grad_fn)(x_TD, weights, routing.weights_TK)


@pytest.mark.parametrize("strategy,options,routing_name", CASES)
def test_strategy_matches_reference_values_and_gradients(experts, strategy, options,
                                                          routing_name):
  routing = ROUTINGS[routing_name]()

  def strategy_fn(x, r, e):
    return dispatch(strategy, x, r, e, **options)[0]

  value_s, grads_s = _loss_and_grads(experts, routing, strategy_fn)
  value_r, grads_r = _loss_and_grads(experts, routing, per_token_reference)
  np.testing.assert_allclose(value_s, value_r, rtol=1e-5, atol=1e-5)
  for g_s, g_r in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g_s, g_r, rtol=1e-4, atol=1e-5)


def test_sorted_runs_eagerly(experts):
  """Eager (un-jitted) once; everything else is jitted (eager dispatch compiles op by op)."""
  routing = ROUTINGS["all_on_one_expert"]()
  x_TD = jax.random.normal(jax.random.key(2), (T, D))
  y_TD, _ = dispatch("sorted", x_TD, routing, experts, rows_per_expert=8)
  np.testing.assert_allclose(y_TD, per_token_reference(x_TD, routing, experts), rtol=1e-5,
                             atol=1e-6)


def test_sorted_overflow_leaks_no_tracer_in_scanned_rematerialised_layers(experts):
  """Regression (an UnexpectedTracerError once seen in a sweep): an earlier overflow pass had a
  custom VJP closing over its traced branch index, which escaped when the backward pass ran in
  another trace than the forward, as in a scanned or rematerialised layer."""
  routing = ROUTINGS["all_on_one_expert"]()  # overflows: both block passes run
  graphdef, weights = nnx.split(experts)
  x_TD = jax.random.normal(jax.random.key(3), (T, D))

  def loss(x_TD, weights, strategy_fn):
    return jnp.sum(jnp.sin(strategy_fn(x_TD, routing, nnx.merge(graphdef, weights))))

  def two_layers(x_TD, weights, strategy_fn):
    layer = jax.checkpoint(lambda total, _: (total + loss(x_TD, weights, strategy_fn), None))
    return jax.lax.scan(layer, 0.0, None, length=2)[0]

  sorted_fn = lambda x, r, e: dispatch("sorted", x, r, e, block_rows=1)[0]
  with jax.checking_leaks():
    grads = fast_jit(jax.grad(two_layers, argnums=(0, 1)), static_argnums=2)(x_TD, weights,
                                                                             sorted_fn)
  expected = fast_jit(jax.grad(two_layers, argnums=(0, 1)), static_argnums=2)(
      x_TD, weights, per_token_reference)
  for g_s, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g_s, g_r, rtol=1e-4, atol=1e-5)


def test_sorted_refuses_experts_holding_a_traced_plain_attribute(experts):
  """Such an attribute would sit in the graphdef, a static argument of the custom VJP, and
  leak into the backward pass; the dispatch says so instead."""
  graphdef, weights = nnx.split(experts)
  routing = ROUTINGS["all_on_one_expert"]()

  def loss(x_TD, weights):
    module = nnx.merge(graphdef, weights)
    module.scale = jnp.mean(x_TD)  # not a Variable
    return jnp.sum(dispatch("sorted", x_TD, routing, module)[0])

  with pytest.raises(TypeError, match="unhashable attribute outside an nnx.Variable"):
    jax.jit(jax.grad(loss))(jnp.ones((T, D)), weights)


@pytest.mark.parametrize("rows", [0, 5, 64])
def test_expert_matmul_matches_batched_matmul_values_and_gradients(rows):
  """The sorted dispatch's grouped matmul (its own VJP) against one batched einsum, also with
  no rows per expert."""
  x_ECI = jax.random.normal(jax.random.key(0), (E, rows, D))
  w_EIO = jax.random.normal(jax.random.key(1), (E, D, F))

  def loss(matmul, x_ECI, w_EIO):
    return jnp.sum(jnp.sin(matmul(x_ECI, w_EIO)))

  for jit in (fast_jit, lambda f: f):
    tuned = jit(jax.value_and_grad(functools.partial(loss, expert_matmul), argnums=(0, 1)))
    batched = jax.value_and_grad(functools.partial(loss, batched_matmul), argnums=(0, 1))
    for a, b in zip(jax.tree.leaves(tuned(x_ECI, w_EIO)),
                    jax.tree.leaves(batched(x_ECI, w_EIO))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gelu_experts_agree_across_strategies():
  gelu = build(lambda: GeluExperts(E, D, F, rngs=nnx.Rngs(1)))
  routing = ROUTINGS["random_top2"]()
  x_TD = jax.random.normal(jax.random.key(2), (T, D))
  reference = per_token_reference(x_TD, routing, gelu)
  for strategy in ("sorted", "einsum"):
    y_TD, _ = fast_jit(lambda x, r, s=strategy: dispatch(s, x, r, gelu))(x_TD, routing)
    np.testing.assert_allclose(y_TD, reference, rtol=1e-5, atol=1e-6)


def test_capacity_drops_overflow_in_priority_order(experts):
  # Every token picks expert 0 first; capacity ceil(T * 1 * 0.5 / 4) = 3 rows per expert.
  routing = make_routing(np.zeros((T, 1)))
  x_TD = jax.random.normal(jax.random.key(2), (T, D))
  reference_TD = per_token_reference(x_TD, routing, experts)
  for strategy in ("einsum", "sorted", "ragged_dot"):
    y_TD, stats = fast_jit(lambda x, r, s=strategy: dispatch(s, x, r, experts,
                                                            capacity_factor=0.5))(x_TD, routing)
    np.testing.assert_allclose(y_TD[:3], reference_TD[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_TD[3:], 0.0)
    np.testing.assert_allclose(stats["dropped_fraction"], 1 - 3 / T)


def test_capacity_agrees_between_einsum_and_sorted_with_and_without_bpr(experts):
  routing = softmax_top_k(_logits(11) + jnp.array([2.0, 1.0, 0.0, 0.0]), 2)
  x_TD = jax.random.normal(jax.random.key(3), (T, D))

  def run(strategy, bpr):
    fn = lambda x, r: dispatch(strategy, x, r, experts, capacity_factor=0.75,
                               batch_prioritized=bpr)
    return fast_jit(fn)(x_TD, routing)

  for bpr in (False, True):
    y_einsum, stats_einsum = run("einsum", bpr)
    y_sorted, stats_sorted = run("sorted", bpr)
    np.testing.assert_allclose(y_sorted, y_einsum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats_sorted["dropped_fraction"], stats_einsum["dropped_fraction"])
    assert float(stats_sorted["dropped_fraction"]) > 0.0
  assert not np.allclose(run("sorted", False)[0], run("sorted", True)[0])


def test_plan_ranks_follow_priority():
  # Tokens 0..3 all choose expert 1 first and expert 0 second; token 2 has the top gate.
  ids = np.array([[1, 0]] * 4)
  weights = np.array([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.5, 0.5]], np.float32)
  routing = make_routing(ids).replace(weights_TK=jnp.asarray(weights))

  @functools.partial(fast_jit, static_argnums=1)
  def ranks_and_sizes(routing, batch_prioritized):
    plan = planning.sort_assignments(routing, batch_prioritized)
    return planning.assignment_ranks(routing, plan), plan.sizes_E

  ranks, sizes = ranks_and_sizes(routing, False)
  np.testing.assert_array_equal(sizes, [4, 4, 0, 0])
  np.testing.assert_array_equal(ranks, [[0, 0], [1, 1], [2, 2], [3, 3]])
  np.testing.assert_array_equal(ranks_and_sizes(routing, True)[0][:, 0], [2, 1, 0, 3])
  inactive = routing.replace(active_TK=jnp.array([[True, False]] * 4))
  ranks, sizes = ranks_and_sizes(inactive, False)
  np.testing.assert_array_equal(sizes, [0, 4, 0, 0])
  assert (ranks[:, 1] >= 8).all()  # inactive choices rank past every capacity


def test_dropless_strategies_report_no_drops(experts):
  routing = ROUTINGS["all_on_one_expert"]()
  for strategy in ("sorted", "ragged_dot"):
    _, stats = fast_jit(lambda x, r, s=strategy: dispatch(s, x, r, experts))(jnp.ones((T, D)),
                                                                           routing)
    assert float(stats["dropped_fraction"]) == 0.0
