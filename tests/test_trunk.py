"""The shared trunk: MoE placement, stages, aux reduction, adaLN modulation, bidirectional mixing,
and the LM on top of a multi-stage trunk (decoding, per-layer bias updates)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import lm_moe
from moejax.errors import ConfigError
from moejax.layers.attention import attention_mask
from moejax.models import trunk as trunk_lib
from moejax.models.lm import MoELM
from moejax.moe.config import MoEConfig

F, M = False, True


@pytest.mark.parametrize("args,expected", [
    ((4, 1), (M, M, M, M)),
    ((4, 2), (F, M, F, M)),
    ((4, 0), (F, F, F, F)),
    ((8, 2, 2), (F, F, F, F, F, M, F, M)),     # V-MoE last-2 of every-2
    ((6, 1, 3), (F, F, F, M, M, M)),
    ((5, 1, None, (0, 3)), (M, F, F, M, F)),   # an explicit list wins
])
def test_moe_placement(args, expected):
  assert trunk_lib.moe_placement(*args) == expected


def _expand(stages):
  return tuple(flag for pattern, repeats in stages for _ in range(repeats) for flag in pattern)


def test_stage_patterns_cover_the_placement_with_few_traced_blocks():
  assert trunk_lib.stage_patterns((F, M) * 8) == (((F, M), 8),)
  assert trunk_lib.stage_patterns((M,) * 16) == (((M,), 16),)
  last_n = trunk_lib.moe_placement(12, 2, 2)
  stages = trunk_lib.stage_patterns(last_n)
  assert _expand(stages) == last_n and sum(len(p) for p, _ in stages) == 3  # (F)x8, (F, M)x2
  rng = np.random.default_rng(0)
  for _ in range(20):
    placement = tuple(bool(b) for b in rng.integers(0, 2, rng.integers(1, 12)))
    stages = trunk_lib.stage_patterns(placement)
    assert _expand(stages) == placement
    assert sum(len(p) for p, _ in stages) <= len(placement)


def _trunk_config(**overrides):
  moe = MoEConfig(num_experts=4, top_k=2, d_ff=32, bias_update_rate=0.01)
  cfg = trunk_lib.TrunkConfig(d_model=16, num_layers=4, num_heads=2, num_kv_heads=2,
                              head_dim=8, d_ff=32, moe=moe, rope_base=None)
  return dataclasses.replace(cfg, **overrides)


def _inputs(batch=2, seq=6, d=16, seed=0):
  x_BTD = jax.random.normal(jax.random.key(seed), (batch, seq, d))
  positions_BT = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
  return x_BTD, positions_BT


def test_adaln_zero_blocks_start_as_the_identity_and_learn_from_the_condition():
  cfg = _trunk_config(cond_dim=5, moe_every=2)
  trunk = trunk_lib.Trunk(cfg, rngs=nnx.Rngs(0))
  x_BTD, positions_BT = _inputs()
  mask = attention_mask(jnp.ones((2, 6), jnp.int32), causal=False)
  cond_BC = jax.random.normal(jax.random.key(1), (2, 5))
  y_BTD, aux = trunk(x_BTD, positions_BT, mask, cond_BC)
  np.testing.assert_array_equal(y_BTD, x_BTD)  # every gate is zero at initialisation
  assert aux["expert_load"].shape == (2, 4)

  def loss(model):
    return jnp.sum(jnp.square(model(x_BTD, positions_BT, mask, cond_BC)[0] - 1.0))

  grads = nnx.grad(loss)(trunk)
  mod_grad = grads["stages"][0]["blocks"][0]["modulation"]["w_CX"][...]
  assert float(jnp.abs(mod_grad).max()) > 0  # the condition reaches the gates


def test_bidirectional_mask_lets_early_tokens_see_later_ones():
  cfg = _trunk_config()
  trunk = trunk_lib.Trunk(cfg, rngs=nnx.Rngs(0))
  x_BTD, positions_BT = _inputs()
  changed = x_BTD.at[:, -1].add(1.0)
  for causal in (True, False):
    mask = attention_mask(jnp.ones((2, 6), jnp.int32), causal=causal)
    first = trunk(x_BTD, positions_BT, mask)[0][:, 0]
    first_changed = trunk(changed, positions_BT, mask)[0][:, 0]
    assert bool(jnp.allclose(first, first_changed)) == causal


def test_aux_is_averaged_over_moe_layers_and_loads_update_each_layers_bias():
  cfg = _trunk_config(num_layers=5, moe_layers=(0, 2, 3))  # several stages
  trunk = trunk_lib.Trunk(cfg, rngs=nnx.Rngs(0))
  assert _expand(trunk.stage_patterns) == cfg.placement
  x_BTD, positions_BT = _inputs()
  mask = attention_mask(jnp.ones((2, 6), jnp.int32))
  _, aux = trunk(x_BTD, positions_BT, mask)
  assert aux["expert_load"].shape == (3, 4) and aux["load_balance_loss"].shape == ()
  # Layer m of the load table must update MoE layer m's bias: give each layer its own loads.
  load_ME = jnp.array([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]])
  trunk.update_router_biases(load_ME)
  depth_order = []  # each MoE layer's bias, in depth order
  for (_, repeats), stage in zip(trunk.stage_patterns, trunk.stages):
    moe_blocks = [b for b in stage.blocks if b.use_moe]
    for l in range(repeats):
      depth_order += [np.asarray(_bias(block))[l] for block in moe_blocks]
  assert len(depth_order) == 3
  for m, bias_E in enumerate(depth_order):
    assert int(np.argmin(bias_E)) == m  # the overloaded expert of layer m lost bias


def _bias(block):
  """The aux-free balancing bias of an MoE block (stacked over the stage's repeats)."""
  biases = [v for path, v in nnx.to_flat_state(nnx.state(block.ffn))
            if "bias" in "/".join(map(str, path))]
  assert len(biases) == 1
  return biases[0][...]


def test_lm_on_a_multi_stage_trunk_decodes_like_its_forward_pass():
  cfg = lm_moe.get_config("smoke").model.copy_and_resolve_references()
  cfg.update(num_layers=5, moe_layers=(0, 3))
  model = MoELM.from_config(cfg, rngs=nnx.Rngs(0))
  assert len(model.trunk.stages) > 1
  ids_BT = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 7)), jnp.int32)
  full_BTV, _ = model(ids_BT)
  cache = model.init_cache(2, 8)
  prompt_BTV, cache = model.decode(ids_BT[:, :5], cache)
  step_BTV, cache = model.decode(ids_BT[:, 5:6], cache)
  np.testing.assert_allclose(prompt_BTV, full_BTV[:, :5], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(step_BTV[:, 0], full_BTV[:, 5], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"moe_layers": (0, 9)}, "config.model.moe_layers has indices [9] outside [0, 4)"),
    ({"moe_last_n": -1}, "config.model.moe_last_n=-1 must be >= 0"),
    ({"ffn_type": "relu2"}, "config.model.ffn_type='relu2' is not one of"),
    ({"moe": {"expert_type": "mlp"}}, "config.model.moe.expert_type='mlp' is not one of"),
])
def test_trunk_config_errors_name_the_field(overrides, message):
  cfg = lm_moe.get_config("smoke").model
  cfg.update(num_layers=4, **overrides)
  with pytest.raises(ConfigError) as error:
    trunk_lib.TrunkConfig.from_config(cfg)
  assert message in str(error.value)
