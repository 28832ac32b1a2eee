"""Routers: the routing functions, the router modules and their registry, balancing,
schedules, losses and metrics (the MoE layer itself: test_moe_layer.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.errors import ConfigError
from moejax.moe import losses
from moejax.moe import routers as R
from moejax.moe.config import MoEConfig
from moejax.moe.layer import EXPERT_LOAD, set_moe_step
from tests.test_moe import build, fast_jit

T, E = 64, 8


def logits(seed=0, tokens=T, experts=E, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), (tokens, experts))


def test_softmax_top_k_picks_largest_and_renormalises():
  logits_TE = jnp.array([[0.0, 3.0, 1.0, 2.0]])
  routing = R.softmax_top_k(logits_TE, 2, renormalize=True)
  assert routing.expert_ids_TK.tolist() == [[1, 3]]
  np.testing.assert_allclose(routing.weights_TK.sum(), 1.0, rtol=1e-6)
  probs_E = jax.nn.softmax(logits_TE)[0]
  raw = R.softmax_top_k(logits_TE, 2, renormalize=False)
  np.testing.assert_allclose(raw.weights_TK, probs_E[jnp.array([[1, 3]])])
  # A balancing bias changes which experts are chosen, never the weights they get.
  biased = R.softmax_top_k(logits_TE, 2, renormalize=False, bias_E=jnp.array([1.0, 0, 0, 0]))
  assert biased.expert_ids_TK.tolist() == [[0, 1]]
  np.testing.assert_allclose(biased.weights_TK, probs_E[jnp.array([[0, 1]])])


def test_sigmoid_top_k_weights_are_renormalised_affinities():
  logits_TE = logits(1)
  routing = R.sigmoid_top_k(logits_TE, 2)
  scores_TK = jnp.take_along_axis(jax.nn.sigmoid(logits_TE), routing.expert_ids_TK, axis=-1)
  np.testing.assert_allclose(routing.weights_TK, scores_TK / scores_TK.sum(-1, keepdims=True),
                             rtol=1e-6)
  np.testing.assert_allclose(routing.probs_TE.sum(-1), 1.0, rtol=1e-6)
  assert (jax.lax.top_k(jax.nn.sigmoid(logits_TE), 2)[1] == routing.expert_ids_TK).all()


def test_noisy_top_k_noise_and_vmoe_losses():
  logits_TE = logits(2)

  def route_fn(logits_TE, key, noise_std):
    routing, aux = R.noisy_top_k(logits_TE, 2, key, noise_std)
    return routing, aux["load_loss"], losses.importance_loss(routing)

  route = fast_jit(route_fn)

  clean, load_loss, importance = route(logits_TE, None, None)
  reference = R.softmax_top_k(logits_TE, 2, renormalize=False)
  np.testing.assert_array_equal(clean.expert_ids_TK, reference.expert_ids_TK)
  np.testing.assert_allclose(clean.weights_TK, reference.weights_TK, rtol=1e-6)
  assert float(load_loss) > 0 and float(importance) > 0
  noisy = route(logits_TE, jax.random.key(0), 10.0)[0]
  assert not np.array_equal(noisy.expert_ids_TK, clean.expert_ids_TK)
  _, uniform_load, uniform_importance = route(jnp.zeros((T, E)), None, None)
  np.testing.assert_allclose(uniform_load, 0.0, atol=1e-10)  # identical experts: balanced
  np.testing.assert_allclose(uniform_importance, 0.0, atol=1e-10)
  # The load loss is differentiable in the clean logits.
  grad = fast_jit(jax.grad(lambda l: route_fn(l, jax.random.key(1), None)[1]))(logits_TE)
  assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_expert_choice_gives_each_expert_its_top_capacity_tokens():
  logits_TE = logits(3)
  routing = R.expert_choice(logits_TE, capacity=10)
  probs_TE = jax.nn.softmax(logits_TE)
  assert routing.max_load == 10 and routing.expert_ids_TK.shape == (T, E)
  np.testing.assert_array_equal(routing.active().sum(0), 10)
  for e in range(E):
    chosen = np.flatnonzero(routing.active()[:, e])
    np.testing.assert_array_equal(np.sort(chosen), np.sort(np.argsort(-probs_TE[:, e])[:10]))
  np.testing.assert_allclose(routing.weights_TK, np.where(routing.active(), probs_TE, 0.0))


def test_sinkhorn_marginals_and_balance():
  skewed_TE = logits(4, scale=2.0) + jnp.linspace(3.0, 0.0, E)
  plan_TE = R.sinkhorn(skewed_TE, iterations=100)
  np.testing.assert_allclose(plan_TE.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(plan_TE.sum(0), T / E, rtol=1e-3)
  balanced = R.sinkhorn_top_k(skewed_TE, 1, iterations=100)
  plain = R.softmax_top_k(skewed_TE, 1)
  assert losses.routing_metrics(balanced)["max_load"] < 0.5 * losses.routing_metrics(plain)[
      "max_load"]
  np.testing.assert_allclose(balanced.weights_TK, 1.0, rtol=1e-6)  # renormalised top-1


def test_relu_router_uses_a_variable_number_of_experts():
  logits_TE = logits(5)
  routing, aux = R.relu_routing(logits_TE)
  scores_TE = jax.nn.relu(logits_TE)
  scores_TE = scores_TE / jnp.sqrt(jnp.mean(scores_TE ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_array_equal(routing.active(), logits_TE > 0)
  np.testing.assert_allclose(routing.weights_TK, scores_TE, rtol=1e-5, atol=1e-6)
  counts_T = routing.active().sum(-1)
  assert counts_T.min() < counts_T.max()  # variable number of experts per token
  np.testing.assert_allclose(aux["router_sparsity_loss"], scores_TE.sum(-1).mean(), rtol=1e-5)
  scaled, _ = R.relu_routing(logits_TE, jnp.full((E,), 2.0))
  np.testing.assert_allclose(scaled.weights_TK, 2 * scores_TE, rtol=1e-5, atol=1e-6)
  capped, _ = R.relu_routing(logits_TE, max_experts=2)
  assert capped.expert_ids_TK.shape == (T, 2) and int(capped.active().sum(-1).max()) <= 2


def test_top_k_schedule_and_masking():
  steps = [0, 10, 49, 50, 99, 100, 1000]
  expected = [8, 8, 6, 5, 3, 2, 2]  # linear from 8 to 2 over 100 steps, whole ks
  assert [R.top_k_at(s, 2, 8, 100) for s in steps] == expected
  traced = fast_jit(lambda s: R.top_k_at(s, 2, 8, 100))
  assert [int(traced(s)) for s in steps] == expected
  assert R.top_k_at(5, 2, 2, 100) == 2 and R.top_k_at(5, 2, 8, 0) == 2
  routing = R.softmax_top_k(logits(6), 4)
  kept = R.keep_first_choices(routing, 2, renormalize=True)
  np.testing.assert_array_equal(kept.active(), np.broadcast_to(np.arange(4) < 2, (T, 4)))
  np.testing.assert_allclose(kept.weights_TK[:, :2].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(kept.weights_TK[:, 2:], 0.0)


def test_aux_free_bias_reduces_imbalance_on_a_skewed_stream():
  skew_E = jnp.linspace(2.0, -2.0, E)

  def step(bias_E, key):
    routing = R.sigmoid_top_k(jax.random.normal(key, (256, E)) + skew_E, 2, bias_E=bias_E)
    load_E = losses.expert_load(routing)
    return losses.aux_free_bias_update(bias_E, load_E, rate=0.02), jnp.max(load_E) / jnp.mean(
        load_E)

  _, max_load = jax.lax.scan(step, jnp.zeros(E), jax.random.split(jax.random.key(0), 300))
  assert float(max_load[0]) > 2.5  # the first steps are badly skewed ...
  assert float(jnp.mean(max_load[-50:])) < 1.3  # ... the bias balances them


@fast_jit
def _losses_and_metrics(ids_TK, probs_TE):
  routing = R.Routing(expert_ids_TK=ids_TK, weights_TK=jnp.full(ids_TK.shape, 0.5),
                      probs_TE=probs_TE, logits_TE=jnp.zeros(probs_TE.shape))
  return {"balance": losses.load_balance_loss(routing),
          "balance_per_sequence": losses.load_balance_loss(routing, group_size=4),
          "z": losses.router_z_loss(routing),
          **losses.routing_metrics(routing, seq_len=4, chunk_size=2, detailed=True)}


def test_balance_losses_and_metrics():
  ids = jnp.asarray(np.stack([np.arange(8) % 4, (np.arange(8) + 1) % 4], 1), jnp.int32)
  uniform = _losses_and_metrics(ids, jnp.full((8, 4), 0.25))
  np.testing.assert_allclose(uniform["balance"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(uniform["balance_per_sequence"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(uniform["z"], np.log(4.0) ** 2, rtol=1e-6)
  skewed = _losses_and_metrics(jnp.zeros_like(ids), jnp.tile(jnp.array([[0.7, 0.1, 0.1, 0.1]]),
                                                             (8, 1)))
  assert float(skewed["balance"]) > 2.0
  # Sequence 0 uses experts {0, 1} in every token, sequence 1 uses {2, 3} then {0, 1}.
  chunked = jnp.array([[0, 1]] * 4 + [[2, 3]] * 2 + [[0, 1]] * 2, jnp.int32)
  metrics = _losses_and_metrics(chunked, jnp.full((8, 4), 0.25))
  np.testing.assert_allclose(metrics["token_sparsity"], 0.5)
  np.testing.assert_allclose(metrics["chunk_sparsity"], 1 - (2 + 2 + 2 + 2) / 16)
  np.testing.assert_allclose(metrics["active_experts"], 2.0)
  np.testing.assert_allclose(metrics["max_load"], 6 / 4)
  np.testing.assert_allclose(metrics["min_load"], 2 / 4)


D = 16


def router_cfg(router: str, **options) -> MoEConfig:
  return MoEConfig(num_experts=E, top_k=2, d_ff=8, router=router, **options)


def test_registry_and_what_each_router_declares():
  declared = {name: (r.supports_bias_balancing, r.supports_top_k_schedule, r.losses)
              for name, r in R.ROUTERS.items()}
  assert declared == {
      "softmax_top_k": (True, True, {}),
      "sigmoid_top_k": (True, True, {}),
      "noisy_top_k": (False, True, {"importance_loss": 0.005, "load_loss": 0.005}),
      "expert_choice": (False, False, {}),
      "sinkhorn_top_k": (False, True, {}),
      "relu": (False, False, {"router_sparsity_loss": 1e-3}),
  }
  assert all(issubclass(r, R.Router) for r in R.ROUTERS.values())
  # Expert choice balances by construction: its Switch balance loss is the constant 1, so the
  # layer does not return it (it would train nothing).
  assert {n: r.omits_layer_losses for n, r in R.ROUTERS.items() if r.omits_layer_losses} == {
      "expert_choice": ("load_balance_loss",)}
  np.testing.assert_allclose(losses.load_balance_loss(R.expert_choice(logits(3), 10)), 1.0,
                             rtol=1e-6)
  assert router_cfg("expert_choice").aux_loss_defaults() == {"router_z_loss": 1e-3}


@pytest.mark.parametrize("name", list(R.ROUTERS))
def test_config_accepts_exactly_the_options_the_router_supports(name):
  router = R.ROUTERS[name]
  checks = [(router.supports_bias_balancing, {"bias_update_rate": 1e-2}),
            (router.supports_top_k_schedule, {"initial_top_k": 4, "top_k_decay_steps": 10})]
  for supported, options in checks:
    if supported:
      router_cfg(name, **options).check()
    else:
      with pytest.raises(ConfigError, match=f"config.model.moe.router in .* not '{name}'"):
        router_cfg(name, **options).check()


@pytest.mark.parametrize("name", list(R.ROUTERS))
def test_each_router_owns_its_parameters_and_state(name):
  router_class = R.ROUTERS[name]
  options = {"bias_update_rate": 1e-2} if router_class.supports_bias_balancing else {}
  router = nnx.eval_shape(lambda: router_class(D, router_cfg(name, **options),
                                               rngs=nnx.Rngs(0)))
  params = nnx.state(router, nnx.Param)
  num_params = router_class.num_params(D, router_cfg(name))
  assert sum(v.size for v in jax.tree.leaves(params)) == num_params
  kinds = {type(v).__name__ for v in jax.tree.leaves(
      nnx.state(router, nnx.Not(nnx.Param)), is_leaf=lambda v: isinstance(v, nnx.Variable))}
  expected = {"noisy_top_k": {"MoEStep", "RouterNoiseKey"}}.get(name, set())
  assert kinds == expected | ({"RouterBias"} if options else set())


def test_routers_read_their_options_and_match_the_routing_functions():
  x_TD = jax.random.normal(jax.random.key(7), (T, D))
  cases = {
      "softmax_top_k": ({"renormalize": False},
                        lambda l: R.softmax_top_k(l, 2, renormalize=False)),
      "sigmoid_top_k": ({}, lambda l: R.sigmoid_top_k(l, 2)),
      "noisy_top_k": ({"noise_std": 0.5}, lambda l: R.noisy_top_k(l, 2, None, 0.5, True)[0]),
      "expert_choice": ({"capacity_factor": 1.5}, lambda l: R.expert_choice(l, 24)),
      "sinkhorn_top_k": ({"sinkhorn_iterations": 3},
                         lambda l: R.sinkhorn_top_k(l, 2, iterations=3)),
      "relu": ({}, lambda l: R.relu_routing(l)[0]),
  }
  for name, (options, reference) in cases.items():
    router = build(lambda n=name, o=options: R.ROUTERS[n](D, router_cfg(n, **o),
                                                        rngs=nnx.Rngs(0)))
    router.eval()  # no noise: comparable with the noiseless function
    graphdef, state = nnx.split(router)

    @fast_jit
    def both(state, x_TD, reference=reference):
      module = nnx.merge(graphdef, state)
      return module(x_TD)[0], reference(x_TD @ module.w_DE[...])

    routing, expected = both(state, x_TD)
    np.testing.assert_array_equal(routing.expert_ids_TK, expected.expert_ids_TK, err_msg=name)
    np.testing.assert_allclose(routing.weights_TK, expected.weights_TK, rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_dispatch_options_come_from_the_router():
  def options(name, **cfg_options):
    router = nnx.eval_shape(lambda: R.ROUTERS[name](D, router_cfg(name, **cfg_options),
                                                    rngs=nnx.Rngs(0)))
    return router.dispatch_options(T)

  assert options("softmax_top_k", capacity_factor=1.25, batch_prioritized=True) == {
      "capacity_factor": 1.25, "batch_prioritized": True, "rows_per_expert": T * 2 // E}
  # Expert choice: every expert takes exactly its capacity ceil(T*k*cf/E), nothing overflows.
  assert options("expert_choice", capacity_factor=1.5) == {"rows_per_expert": 24}
  assert options("expert_choice") == {"rows_per_expert": 16}


def test_noise_follows_the_step_and_eval_is_deterministic():
  router = build(lambda: R.NoisyTopK(D, router_cfg("noisy_top_k", noise_std=1.0),
                                     rngs=nnx.Rngs(0)))
  x_TD = jax.random.normal(jax.random.key(2), (T, D))
  route = fast_jit(lambda graphdef, state: nnx.merge(graphdef, state)(x_TD)[0].expert_ids_TK,
                   static_argnums=0)

  def experts_at(step):
    graphdef, state = nnx.split(router)
    return route(graphdef, set_moe_step(state, step))

  assert np.array_equal(experts_at(3), experts_at(3))
  assert not np.array_equal(experts_at(3), experts_at(4))
  router.eval()
  np.testing.assert_array_equal(experts_at(3), experts_at(4))


def test_lm_returns_per_layer_loads_and_updates_each_layers_bias(smoke_config):
  """The scanned LM keeps ``expert_load`` per layer [L, E] (everything else is averaged) and
  ``update_router_biases`` moves each layer's stacked bias by its own load."""
  from moejax.models.lm import MoELM  # pylint: disable=import-outside-toplevel
  cfg = smoke_config.model.copy_and_resolve_references()
  cfg.moe.update(router="sigmoid_top_k", bias_update_rate=0.01, initial_top_k=3,
                 top_k_decay_steps=10, dispatch="einsum")  # smoke: E=4, k=2, 2 layers
  graphdef, params, model_state = nnx.split(
      build(lambda: MoELM.from_config(cfg, rngs=nnx.Rngs(0))),
                                            nnx.Param, ...)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 16)), jnp.int32)

  @fast_jit
  def forward_and_update(model_state, step):
    model = nnx.merge(graphdef, params, set_moe_step(model_state, step), copy=True)
    _, aux = model(ids)
    bias_after_forward_LE = model.trunk.stages[0].blocks[0].ffn.router.bias_E[...]
    model.update_router_biases(aux[EXPERT_LOAD])
    return aux, bias_after_forward_LE, nnx.state(model, nnx.Not(nnx.Param))

  aux, bias_after_forward_LE, updated = forward_and_update(model_state, 0)
  load_LE = np.asarray(aux[EXPERT_LOAD])
  assert load_LE.shape == (2, 4) and (load_LE.sum(-1) == 2 * 16 * 3).all()  # k = 3 at step 0
  assert float(aux["top_k"]) == 3.0 and aux["max_load"].shape == ()
  np.testing.assert_array_equal(bias_after_forward_LE, 0.0)  # the forward pass mutates nothing
  expected_LE = 0.01 * np.sign(load_LE.mean(-1, keepdims=True) - load_LE)
  np.testing.assert_allclose(
      updated["trunk"]["stages"][0]["blocks"][0]["ffn"]["router"]["bias_E"][...], expected_LE,
      rtol=1e-6)
  assert float(forward_and_update(updated, 10)[0]["top_k"]) == 2.0

