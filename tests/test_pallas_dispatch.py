"""The ``pallas`` dispatch strategy (kernels interpreted on CPU) computes the MoE layer that
``sorted`` computes, in values and in gradients; expert parallelism with a group offset under
shard_map; and the grouped matmul benchmark runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe.config import MoEConfig
from moejax.moe.layer import MoELayer
from tests.conftest import run_module
from tests.test_moe import build, fast_jit

D, E, F = 8, 4, 16


def _layer_loss_and_grads(dispatch: str, x_BSD, **options):
  cfg = MoEConfig(num_experts=E, top_k=2, d_ff=F, dispatch=dispatch, **options)
  graphdef, params, rest = nnx.split(build(lambda: MoELayer(D, cfg, rngs=nnx.Rngs(0))),
                                     nnx.Param, ...)

  def loss(params, x):
    y, aux = nnx.merge(graphdef, params, rest)(x)
    return jnp.sum(jnp.sin(y)) + aux["load_balance_loss"], y

  (value, y), grads = fast_jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      params, x_BSD)
  return value, y, grads


@pytest.mark.parametrize("options", [{}, {"expert_type": "gelu", "capacity_factor": 0.75}])
def test_pallas_layer_matches_sorted_in_values_and_gradients(options):
  x_BSD = jax.random.normal(jax.random.key(3), (2, 12, D))
  ours = _layer_loss_and_grads("pallas", x_BSD, **options)
  theirs = _layer_loss_and_grads("sorted", x_BSD, **options)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-5)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(ours[2]),
                               jax.tree_util.tree_leaves_with_path(theirs[2])):
    assert float(jnp.max(jnp.abs(b))) > 0, path  # every expert weight gets a gradient
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(path))


def test_expert_parallel_gmm_under_shard_map_equals_one_device():
  """2 fake devices, 3 of 6 experts each, group_offset from lax.axis_index (probe module)."""
  proc = run_module("tests.pallas_ep_probe",
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=300)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["devices"] == 2 and report["dw_spec"][0] == "expert"
  for name in ("y", "loss", "dx", "dw"):
    assert report[name] < 1e-5, (name, report)


@pytest.mark.slow
def test_gmm_benchmark_quick_prints_every_strategy():
  proc = run_module("benchmarks.gmm", "--quick", timeout=300)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["interpreted"] is True and "interpret" in proc.stdout
  kinds = {(r["kind"], r["strategy"]) for r in report["results"]}
  assert {("gmm", "pallas"), ("gmm", "ragged_dot"), ("gmm", "dense"), ("ffn", "pallas"),
          ("ffn", "ragged_dot"), ("ffn", "sorted"), ("ffn", "dense")} <= kinds
  for row in report["results"]:
    assert row["seconds"] > 0 and row["tflops"] > 0 and row["ratio_vs_dense"] > 0
