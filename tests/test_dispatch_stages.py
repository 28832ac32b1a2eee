"""The dispatch stages: permute -> compute -> combine by hand is ``dispatch()``, and the grouped
rows that permute hands to the experts (what an all-to-all would ship) are grouped by expert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe.dispatch import STRATEGIES, dispatch
from moejax.moe.experts import SwiGLUExperts
from tests.test_moe import D, E, F, ROUTINGS, T, build, fast_jit

STAGE_CASES = [
    ("einsum", {}, "masked"),
    ("einsum", {"capacity_factor": 0.75, "batch_prioritized": True}, "random_top2"),
    ("sorted", {}, "random_top2"),
    ("sorted", {"block_rows": 1}, "all_on_one_expert"),  # both overflow block passes
    ("sorted", {"capacity_factor": 0.75, "batch_prioritized": True}, "random_top2"),
    ("sorted", {"rows_per_expert": 9}, "expert_choice"),  # max_load: no overflow pass
    ("ragged_dot", {}, "masked"),
    ("ragged_dot", {"capacity_factor": 0.75}, "random_top2"),
    ("pallas", {}, "masked"),  # the kernel interpreted on CPU
]


@pytest.fixture(scope="module")
def experts():
  return build(lambda: SwiGLUExperts(E, D, F, rngs=nnx.Rngs(0)))


def by_hand(strategy, x_TD, routing, experts, **options):
  x_grouped, ctx = strategy.permute(x_TD, routing, **options)
  return strategy.combine(strategy.compute(x_grouped, experts, ctx), ctx)


def test_every_strategy_has_stage_cases():
  assert {s for s, _, _ in STAGE_CASES} == set(STRATEGIES)


@pytest.mark.parametrize("name,options,routing_name", STAGE_CASES)
def test_stages_by_hand_equal_dispatch(experts, name, options, routing_name):
  routing = ROUTINGS[routing_name]()
  x_TD = jax.random.normal(jax.random.key(4), (T, D))
  staged = fast_jit(lambda x, r: by_hand(STRATEGIES[name], x, r, experts, **options))(x_TD,
                                                                                      routing)
  whole = fast_jit(lambda x, r: dispatch(name, x, r, experts, **options))(x_TD, routing)
  for a, b in zip(jax.tree.leaves(staged), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,options,routing_name", STAGE_CASES[1::2])
def test_stages_pass_their_context_across_jit_boundaries(experts, name, options, routing_name):
  """Each stage compiled on its own, as with an all-to-all between them: the grouped rows and
  the context (a pytree) leave one program and enter the next."""
  strategy, routing = STRATEGIES[name], ROUTINGS[routing_name]()
  x_TD = jax.random.normal(jax.random.key(4), (T, D))
  x_grouped, ctx = fast_jit(lambda x, r: strategy.permute(x, r, **options))(x_TD, routing)
  y_grouped = fast_jit(lambda x, c: strategy.compute(x, experts, c))(x_grouped, ctx)
  staged = fast_jit(strategy.combine)(y_grouped, ctx)
  whole = fast_jit(lambda x, r: dispatch(name, x, r, experts, **options))(x_TD, routing)
  for a, b in zip(jax.tree.leaves(staged), jax.tree.leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _tokens_of_experts(routing):
  """For each expert, the sorted ids of the tokens with an active choice of it."""
  ids_TK, active_TK = np.asarray(routing.expert_ids_TK), np.asarray(routing.active())
  return [sorted(t for t in range(T) if (active_TK[t] & (ids_TK[t] == e)).any())
          for e in range(E)]


@pytest.mark.parametrize("name,options", [("sorted", {"rows_per_expert": 2 * T}),
                                          ("einsum", {})])
@pytest.mark.parametrize("routing_name", ["random_top2", "masked", "empty_experts"])
def test_permute_groups_rows_by_expert(name, options, routing_name):
  """Row (e, c) of x_ECD holds the c-th token routed to expert e; the rows past expert e's
  load weigh nothing (sorted) or are zero (einsum). Column 0 of x_TD is the token id + 1."""
  routing = ROUTINGS[routing_name]()
  x_TD = jax.random.normal(jax.random.key(5), (T, D)).at[:, 0].set(jnp.arange(1, T + 1))
  x_ECD, ctx = fast_jit(lambda x, r: STRATEGIES[name].permute(x, r, **options))(x_TD, routing)
  token_EC = np.asarray(x_ECD[..., 0]).astype(int) - 1
  for e, tokens in enumerate(_tokens_of_experts(routing)):
    assert sorted(token_EC[e, :len(tokens)]) == tokens
    if name == "sorted":
      np.testing.assert_array_equal(ctx.token_EC[e, :len(tokens)], token_EC[e, :len(tokens)])
      np.testing.assert_array_equal(ctx.weight_EC[e, len(tokens):], 0.0)
    else:
      np.testing.assert_array_equal(x_ECD[e, len(tokens):], 0.0)
