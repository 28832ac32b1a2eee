"""The MoE language model: shapes, causality, packed segments, layer variants, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.models.lm import MoELM
from moejax.tasks.lm import masked_cross_entropy


def build(config, **overrides):
  model_cfg = config.model.copy_and_resolve_references()
  model_cfg.update(overrides)
  return MoELM.from_config(model_cfg, rngs=nnx.Rngs(0)), model_cfg


def random_ids(shape, vocab, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, shape), jnp.int32)


def test_shapes_and_aux(smoke_config):
  model, cfg = build(smoke_config)
  logits, aux = model(random_ids((3, 16), cfg.vocab_size))
  assert logits.shape == (3, 16, cfg.vocab_size) and logits.dtype == jnp.float32
  assert set(aux) == {"load_balance_loss", "router_z_loss", "max_load", "router_entropy",
                      "dropped_fraction"}
  assert all(v.shape == () for v in aux.values())


def test_causality(smoke_config):
  """Changing token 9 leaves every earlier logit bit for bit the same.

  One sequence: the tokens before token 9 keep their rows in every expert group (groups are
  ordered by token), so they see the same arithmetic. In a batch, another sequence's tokens
  move within the groups when token 9 changes expert, and a BLAS GEMM may round a row
  differently at another row position (OpenBLAS's micro-kernel blocks; kernels_cpu/).
  """
  model, cfg = build(smoke_config)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids)[0])
  ids = random_ids((1, 16), cfg.vocab_size)
  changed = ids.at[:, 9].set((ids[:, 9] % (cfg.vocab_size - 1)) + 1)
  before, after = forward(state, ids), forward(state, changed)
  np.testing.assert_array_equal(before[:, :9], after[:, :9])
  assert not np.allclose(before[:, 9:], after[:, 9:])


def test_packed_segments_do_not_see_each_other(smoke_config):
  model, cfg = build(smoke_config)
  ids = random_ids((1, 16), cfg.vocab_size)
  segments = jnp.array([[1] * 6 + [2] * 10])
  positions = jnp.array([list(range(6)) + list(range(10))])
  packed, _ = model(ids, positions, segments)
  alone, _ = model(ids[:, 6:])  # the second segment on its own, positions from 0
  np.testing.assert_allclose(packed[:, 6:], alone, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("overrides", [
    {"moe_every": 2}, {"moe_every": 0}, {"moe": {"shared_d_ff": 16}}, {"num_kv_heads": 2},
    {"moe": {"dispatch": "einsum"}}, {"moe": {"top_k": 4}}, {"moe_layers": (0,)},
    {"moe": {"expert_type": "gelu"}, "ffn_type": "gelu", "moe_every": 2},
])
def test_variants_run_and_are_finite(smoke_config, overrides):
  model, cfg = build(smoke_config, **overrides)
  logits, aux = model(random_ids((2, 8), cfg.vocab_size))
  assert np.isfinite(np.asarray(logits)).all()
  assert ("load_balance_loss" in aux) == bool(cfg.moe_every or cfg.moe_layers)


def test_remat_changes_memory_not_results(smoke_config):
  ids = random_ids((2, 8), smoke_config.model.vocab_size)

  def loss_and_grads(remat):
    model, _ = build(smoke_config, remat=remat)
    graphdef, params = nnx.split(model)

    def loss(p):
      logits, _ = nnx.merge(graphdef, p)(ids)
      return masked_cross_entropy(logits, ids, jnp.ones(ids.shape))

    return jax.jit(jax.value_and_grad(loss))(params)

  value_none, grads_none = loss_and_grads("none")
  for remat in ("full", "dots"):
    value, grads = loss_and_grads(remat)
    np.testing.assert_allclose(value, value_none, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_none)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute(smoke_config):
  model, cfg = build(smoke_config, dtype="bfloat16")
  logits, _ = model(random_ids((2, 8), cfg.vocab_size))
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  params = nnx.state(model, nnx.Param)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_layers_are_stacked_on_a_leading_axis(smoke_config):
  model, cfg = build(smoke_config, num_layers=4, moe_every=2)
  w = model.trunk.stages[0].blocks[1].ffn.experts.w_gate_EDF
  assert w.shape == (2, cfg.moe.num_experts, cfg.d_model, cfg.moe.d_ff)
  assert w.get_metadata()["out_sharding"] == ("layers", "expert", "embed", "mlp")


def test_init_scale_multiplies_the_fan_in_init_std(smoke_config):
  """model.init_scale = 1 is the default init bit for bit; s scales every fan-in-initialised
  weight by s and leaves the embedding, router and norms alone."""
  def params_of(scale=None):
    model_cfg = smoke_config.model.copy_and_resolve_references()
    if scale is None:
      del model_cfg["init_scale"]  # a config written before the field existed
    else:
      model_cfg.init_scale = scale
    model = MoELM.from_config(model_cfg, rngs=nnx.Rngs(0))
    return {"/".join(map(str, path)): np.asarray(v.value)
            for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}

  default, one, doubled = params_of(), params_of(1.0), params_of(2.0)
  assert default.keys() == one.keys() == doubled.keys()
  for name in default:
    np.testing.assert_array_equal(default[name], one[name])
  scaled = [n for n in default if not np.array_equal(default[n], doubled[n])]
  assert any("unembed" in n for n in scaled) and any("expert" in n.lower() for n in scaled)
  assert not any("embed/embedding" in n or "router" in n or "norm" in n for n in scaled)
  for name in scaled:
    np.testing.assert_allclose(doubled[name], 2 * default[name], rtol=1e-6)
  with pytest.raises(ValueError, match="positive"):
    params_of(0.0)
