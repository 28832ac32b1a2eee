"""The MoE layer: built from a ``MoEConfig``, every router through it, the aux contract (every
configured loss returned and trained), a router added by one class and one registry entry, the
aux-free bias and the top-k schedule, and the dispatch strategies' agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.errors import ConfigError
from moejax.moe import routers as R
from moejax.moe.config import MoEConfig, all_aux_loss_names
from moejax.moe.experts import GeluExperts
from moejax.moe.layer import EXPERT_LOAD, LAYER_LOSSES, MoELayer, set_moe_step
from tests.test_moe import build, fast_jit

D, E, F = 8, 4, 16


def moe_cfg(**options) -> MoEConfig:
  return MoEConfig(**{"num_experts": E, "top_k": 2, "d_ff": F, **options})


def x_BSD(batch=2, seq=8, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, seq, D))


def check_aux_contract(cfg: MoEConfig):
  """The layer returns exactly the losses of ``cfg.aux_loss_defaults()``, as float32 scalars,
  and each one trains: changing its weight alone changes the gradient of the weighted sum."""
  defaults = cfg.aux_loss_defaults()
  names = list(defaults)
  graphdef, params, rest = nnx.split(build(lambda: MoELayer(D, cfg, rngs=nnx.Rngs(0))),
                                     nnx.Param, ...)

  def weighted_losses(params, weights_N):
    _, aux = nnx.merge(graphdef, params, rest)(x_BSD())
    return sum(w * aux[name] for w, name in zip(weights_N, names)), aux

  grad_fn = fast_jit(jax.grad(weighted_losses, has_aux=True))
  weights_N = jnp.array([defaults[name] for name in names])
  grads, aux = grad_fn(params, weights_N)
  assert set(aux) & set(all_aux_loss_names()) == set(defaults)
  assert all(aux[name].shape == () and aux[name].dtype == jnp.float32 for name in names)
  for i, name in enumerate(names):
    moved, _ = grad_fn(params, weights_N.at[i].add(1.0))
    change = max(float(jnp.max(jnp.abs(a - b)))
                 for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(moved)))
    assert change > 1e-6, f"{cfg.router}: the weight of {name} does not reach the gradient"


@pytest.mark.parametrize("router", list(R.ROUTERS))
def test_every_configured_loss_is_returned_and_trains(router):
  check_aux_contract(moe_cfg(router=router))


def test_a_new_router_is_one_class_and_one_registry_entry(monkeypatch):

  class ToyRouter(R.Router):
    """Softmax top-k plus an entropy penalty of its own, written outside the package."""
    losses = {"toy_entropy_loss": 0.1}

    def route(self, logits_TE, top_k):
      routing = R.softmax_top_k(logits_TE, top_k)
      entropy_T = -jnp.sum(routing.probs_TE * jnp.log(routing.probs_TE), axis=-1)
      return routing, {"toy_entropy_loss": jnp.mean(entropy_T)}

  monkeypatch.setitem(R.ROUTERS, "toy", ToyRouter)
  cfg = moe_cfg(router="toy", top_k=1)
  assert cfg.aux_loss_defaults() == {**LAYER_LOSSES, "toy_entropy_loss": 0.1}
  assert "toy_entropy_loss" in all_aux_loss_names()
  check_aux_contract(cfg)


@pytest.mark.parametrize("options", [
    {"router": "sigmoid_top_k", "bias_update_rate": 1e-2},
    {"router": "expert_choice", "capacity_factor": 1.5},
    {"initial_top_k": 4, "top_k_decay_steps": 10, "detailed_metrics": True,
     "shared_d_ff": 8, "dispatch": "einsum", "capacity_factor": 2.0},
])
def test_layer_runs_with_router_options(options):
  cfg = moe_cfg(**options)
  layer = build(lambda: MoELayer(D, cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(layer)

  @fast_jit
  def forward(state, x_BSD):
    model = nnx.merge(graphdef, state, copy=True)
    y_BSD, aux = model(x_BSD)
    return y_BSD, aux, nnx.state(model)

  y_BSD, aux, new_state = forward(state, x_BSD())
  assert y_BSD.shape == (2, 8, D) and np.isfinite(y_BSD).all()
  load_E = aux.pop(EXPERT_LOAD, None)
  assert all(np.isfinite(v) and v.shape == () for v in aux.values())
  assert {"max_load", "router_entropy", "dropped_fraction"} <= set(aux)
  assert (load_E is not None) == ("bias_update_rate" in options)
  if load_E is not None:  # the forward pass returns the load, the bias is untouched
    assert load_E.shape == (E,) and float(load_E.sum()) == 2 * 8 * 2
    np.testing.assert_array_equal(new_state["router"]["bias_E"][...], 0.0)
    layer.update_bias(load_E)
    np.testing.assert_allclose(layer.router.bias_E[...],
                               1e-2 * np.sign(load_E.mean() - load_E), rtol=1e-6)
  if "initial_top_k" in options:
    assert float(aux["top_k"]) == 4.0 and float(aux["active_experts"]) == 4.0
    assert {"chunk_sparsity", "importance_cv2"} <= set(aux) and "importance_loss" not in aux
    later = forward(set_moe_step(state, 10), x_BSD())[1]
    assert float(later["top_k"]) == 2.0 and float(later["active_experts"]) == 2.0
    layer.eval()  # evaluation routes with the final k whatever the step
    graphdef, state = nnx.split(layer)
    evaluated = fast_jit(lambda s, x: nnx.merge(graphdef, s)(x)[1])(state, x_BSD())
    assert float(evaluated["top_k"]) == 2.0 and float(evaluated["active_experts"]) == 2.0


def test_parameters_and_their_paths():
  def paths(cfg):
    layer = nnx.eval_shape(lambda: MoELayer(D, cfg, rngs=nnx.Rngs(0)))
    return layer, sorted("/".join(map(str, path)) for path, _ in nnx.state(layer).flat_state())

  layer, default = paths(moe_cfg(shared_d_ff=8))
  assert default == ["experts/w_down_EFD", "experts/w_gate_EDF", "experts/w_up_EDF",
                     "router/w_DE", "shared/w_down_FD", "shared/w_gate_DF", "shared/w_up_DF"]
  layer, gelu = paths(moe_cfg(expert_type="gelu"))
  assert isinstance(layer.experts, GeluExperts)
  assert gelu == ["experts/w_in_EDF", "experts/w_out_EFD", "router/w_DE"]
  assert layer.experts.w_in_EDF.shape == (E, D, F)


def test_moe_layer_strategies_agree():
  outputs = {}
  for strategy in ("sorted", "einsum"):
    layer = build(lambda s=strategy: MoELayer(D, moe_cfg(shared_d_ff=8, dispatch=s),
                                              rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(layer)
    outputs[strategy], aux = fast_jit(lambda s, x: nnx.merge(graphdef, s)(x))(
        state, x_BSD(seq=6, seed=0))
    assert set(aux) == {"load_balance_loss", "router_z_loss", "dropped_fraction", "max_load",
                        "router_entropy"}
  np.testing.assert_allclose(outputs["sorted"], outputs["einsum"], rtol=1e-5, atol=1e-6)


def test_moe_layer_rejects_impossible_configs():
  for options, field in [({"top_k": 5}, "top_k=5"), ({"router": "nope"}, "router='nope'"),
                         ({"router": "expert_choice", "bias_update_rate": 1e-3},
                          "bias_update_rate=0.001")]:
    with pytest.raises(ConfigError, match=f"config.model.moe.{field}"):
      MoELayer(D, moe_cfg(**options), rngs=nnx.Rngs(0))
