"""Sharded dispatch, expert parallelism and gradient accumulation (docs/parallelism.md).

The multi-device tests run probes in a subprocess with 8 fake CPU devices and compare them with
one device in this process.
"""

import json
import math

import numpy as np
import pytest

from configs import lm_moe
from tests.conftest import run_module

STEPS = 20
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
# Capacity is per group of tokens; 32 tokens = one row of the smoke batch, the finest data
# shard of the meshes below, so every mesh computes the one-device function.
CAPACITY = {"capacity_factor": 1.0, "group_size": 32}


def equivalence_config(mesh: dict, moe: dict, train: dict | None = None):
  """The LM smoke preset with 8 experts (one per device on an (expert 8) mesh) on ``mesh``;
  ``train`` updates config.train (e.g. microbatches)."""
  config = lm_moe.get_config("smoke")
  config.mesh.update({"data": 1, "fsdp": 1, "expert": 1, "tensor": 1, **mesh})
  config.model.moe.update(num_experts=8, **moe)
  config.train.update(steps=STEPS, log_every=1, checkpoint_every=STEPS, progress_bar=False,
                      **(train or {}))
  return config


def _one_device_losses(tmp_path, name: str, moe: dict, train: dict | None = None) -> list[float]:
  from moejax.training.logging import read_jsonl  # pylint: disable=import-outside-toplevel
  from moejax.training.trainer import train as train_run  # pylint: disable=import-outside-toplevel
  train_run(equivalence_config({}, moe, train), str(tmp_path / name))
  return [row["loss"] for row in read_jsonl(tmp_path / name / "metrics.jsonl")]


def _largest_relative_difference(one: list[float], other: list[float]) -> float:
  assert len(one) == len(other) == STEPS
  return max(abs(a - b) / abs(a) for a, b in zip(one, other))


MESHES = {"data2_expert4": {"data": 2, "expert": 4},
          "fsdp2_expert2_tensor2": {"fsdp": 2, "expert": 2, "tensor": 2},
          "expert8": {"expert": 8}}


@pytest.mark.slow
@pytest.mark.parametrize("moe", [{}, CAPACITY], ids=["dropless", "capacity"])
def test_meshes_match_one_device_over_20_steps(tmp_path, moe):
  """Per-step losses of 20 training steps on three 8-device meshes equal one device's within
  2e-6 relative: float32 sums in another order (per-shard partial sums of the gradients, the
  hidden units' psum) differ by ~1e-7 (measured: at most 3.3e-7 over the 20 steps, all six
  cases); a routing or capacity decision taken differently would move the loss by >1e-3."""
  one = _one_device_losses(tmp_path, "one", moe)
  cases = [{"name": name, "mesh": mesh, "moe": moe} for name, mesh in MESHES.items()]
  proc = run_module("tests.ep_train_probe", str(tmp_path), json.dumps(cases), env=EIGHT,
                    timeout=1200)
  runs = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
  assert [run["name"] for run in runs] == list(MESHES)
  for run in runs:
    worst = _largest_relative_difference(one, run["losses"])
    print(run["name"], moe, "largest relative loss difference", worst)
    assert worst <= 2e-6, (run["name"], one, run["losses"])


@pytest.mark.slow
def test_microbatches_on_a_mesh_match_one_device(tmp_path):
  """Gradient accumulation on an 8-device mesh (2 microbatches of 4 rows, each split over
  data x expert) against the same accumulation on one device, over 20 steps: the tolerance of
  the meshes above (float32 partial sums in another order). Each microbatch's rows are taken
  from every device's shard, so the microbatches and their aux losses are the one device's."""
  train = {"microbatches": 2}
  one = _one_device_losses(tmp_path, "one", {}, train)
  case = {"name": "micro2", "mesh": {"data": 2, "expert": 2, "tensor": 2}, "moe": {},
          "train": train}
  proc = run_module("tests.ep_train_probe", str(tmp_path), json.dumps([case]), env=EIGHT,
                    timeout=900)
  (run,) = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
  worst = _largest_relative_difference(one, run["losses"])
  print("2 microbatches on", case["mesh"], "largest relative loss difference", worst)
  assert worst <= 2e-6, (one, run["losses"])


LAYER_CASES = [
    {"mesh": {"data": 2, "expert": 4}, "moe": {}},
    {"mesh": {"fsdp": 2, "expert": 2, "tensor": 2}, "moe": {"dispatch": "ragged_dot"}},
    {"mesh": {"expert": 8}, "moe": {"capacity_factor": 1.0, "group_size": 16}},
    {"mesh": {"data": 8}, "moe": {"capacity_factor": 1.25, "dispatch": "einsum",
                                  "group_size": 16}},
    {"mesh": {"data": 2, "expert": 4}, "moe": {"ep_exchange": "ragged"}, "lower_only": True},
    # The Pallas grouped matmul (interpreted on CPU) on each device's received rows.
    {"mesh": {"data": 2, "expert": 4}, "moe": {"dispatch": "pallas"}},
    {"mesh": {"fsdp": 2, "expert": 2, "tensor": 2}, "moe": {"dispatch": "pallas"}},
]


def test_moe_layer_on_meshes_matches_one_device():
  """The MoE layer alone (value, input and parameter gradients of a fixed loss) on 8 devices
  against one device. Gradients: 1e-6 of the largest entry. The loss is a sum of n = 4,096
  random-sign terms whose value may cancel (0.35-0.93 here against a root-sum-square of the terms,
  rss, of 1.1-1.2), computed on a mesh in another order (tensor-parallel partial sums, per-shard
  partial sums): the float32 error of such a reordered sum is a random walk of n roundings of
  size eps * rss, so the bound is sqrt(n) * eps * rss (7.6e-6 * rss; measured 0.6e-6 to 0.9e-6
  * rss, printed). A routing or capacity decision taken differently moves the loss by orders of
  magnitude more. Tokens are exchanged with all-to-all exactly where the expert axis is > 1.
  The ``pallas`` cases run the interpreted kernel without shard_map's varying-type check
  (expert_parallel.sharded_dispatch): equal gradients show that the check's absence loses
  nothing there."""
  proc = run_module("tests.ep_layer_probe", json.dumps(LAYER_CASES), env=EIGHT, timeout=900)
  results = [json.loads(line) for line in proc.stdout.strip().splitlines()
             if line.startswith("{")]
  assert len(results) == len(LAYER_CASES)
  for case, result in zip(LAYER_CASES, results):
    if case.get("lower_only"):  # ragged: lowered (XLA:CPU cannot run it), never the stand-in
      assert result["ragged_all_to_all"] == 2 * 2, result  # there and back, forward and VJP
      continue
    assert result["shard_map"], result
    assert (result["all_to_all"] > 0) == (case["mesh"].get("expert", 1) > 1), result
    assert result["dropped"][0] == result["dropped"][1], result
    print(f"{case['mesh']} {case['moe']}: loss differs by {result['loss']:.1e} = "
          f"{result['loss'] / result['loss_scale']:.1e} rss (value {result['loss_value']:.3f}, "
          f"terms' root-sum-square {result['loss_scale']:.1f}); "
          f"parameter gradients by {result['dparams'] / result['grad_scale']:.1e} of the largest")
    bound = math.sqrt(result["num_terms"]) * np.finfo(np.float32).eps * result["loss_scale"]
    assert result["loss"] <= bound, (bound, result)
    assert result["dx"] <= 1e-6 and result["dparams"] <= 1e-6 * result["grad_scale"], result


@pytest.mark.parametrize("mesh, update, field", [
    ({"expert": 8}, {"model.moe.num_experts": 4}, "config.model.moe.num_experts=4"),
    ({"data": 2, "tensor": 4}, {"model.moe.d_ff": 66}, "config.model.moe.d_ff=66"),
    ({"data": 8}, {"train.microbatches": 2}, "config.train.microbatches=2"),
    ({"data": 4, "expert": 2}, {"sharding_rules": [("batch", "data"), ("expert", "expert")]},
     "the batch rule"),
])
def test_impossible_layouts_fail_before_compile(mesh, update, field):
  from moejax import validation  # pylint: disable=import-outside-toplevel
  config = equivalence_config(mesh, {})
  config.update_from_flattened_dict(update)
  with pytest.raises(validation.ConfigError, match=field.replace(".", r"\.")):
    validation.validate_run(config, 8)


def test_microbatches_give_the_update_of_one_batch():
  """One train step with the batch in 4 microbatches against the whole batch at once: the same
  loss, gradient norm and optimizer moments (float32 sums in another order: 1e-6 relative on
  the gradient, 2e-6 on the moments, which hold its square too).
  The aux-loss weights are 0 here: the load-balance loss is a product of batch statistics, so
  per microbatch it is another loss (module docstring of moejax/training/step.py)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from moejax import sharding  # pylint: disable=import-outside-toplevel
  from moejax.training import task as task_lib  # pylint: disable=import-outside-toplevel
  from moejax.training.optimizer import make_optimizer  # pylint: disable=import-outside-toplevel
  from moejax.training.state import init_train_state, model_graphdef  # pylint: disable=import-outside-toplevel
  from moejax.training.step import make_train_step  # pylint: disable=import-outside-toplevel
  config = lm_moe.get_config("smoke")
  for name in config.aux_loss_weights:
    config.aux_loss_weights[name] = 0.0
  task, graphdef = task_lib.get(config), model_graphdef(config)
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  with sharding.use_rules(config.sharding_rules):
    state, _ = init_train_state(config, tx, sharding.make_mesh({"data": 1},
                                                               devices=jax.devices()[:1]))
  batch = {k: jnp.asarray(v) for k, v in task.make_source(config, "train").batch(0).items()
           if k in task.batch_spec(config)}
  weights = task_lib.aux_loss_weights(config, task)
  results = [jax.jit(make_train_step(graphdef, tx, schedule, task.loss, weights,
                                     microbatches=m))(state, batch) for m in (1, 4)]
  (one, metrics_one), (four, metrics_four) = results
  for key in ("loss", "grad_norm"):
    assert abs(float(metrics_one[key]) - float(metrics_four[key])) <= 1e-6 * float(
        metrics_one[key])
  moments = zip(jax.tree.leaves(one.opt_state), jax.tree.leaves(four.opt_state))
  for a, b in moments:
    scale = float(jnp.max(jnp.abs(a))) if a.size else 0.0
    assert float(jnp.max(jnp.abs(a - b), initial=0.0)) <= 2e-6 * max(scale, 1e-12)


@pytest.mark.slow
def test_checkpoints_move_between_meshes(tmp_path):
  """Saved on (data 8), resumed on (expert 4, data 2), saved there and resumed on (data 8): the
  restored state is bitwise the saved one whatever the mesh, and the resumed runs' losses are
  the uninterrupted run's (2e-6 relative, the mesh tolerance above)."""
  proc = run_module("tests.ep_restore_probe", str(tmp_path), env=EIGHT, timeout=1200)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["bitwise_equal"]
  # the experts' weights [layers, E, D, F]: replicated over E on (data 8), split on (expert 4)
  assert "expert" not in result["specs"][0] and result["specs"][1][1] == "expert", result["specs"]
  uninterrupted = result["a"]
  assert sorted(map(int, result["b"])) == list(range(11, STEPS + 1))
  assert sorted(map(int, result["c"])) == list(range(16, STEPS + 1))
  for label, resumed in (("(expert 4, data 2)", result["b"]), ("back on (data 8)", result["c"])):
    worst = max(abs(loss - uninterrupted[step]) / abs(loss) for step, loss in resumed.items())
    print(f"resumed {label}: largest relative loss difference {worst:.1e}")
    for step, loss in resumed.items():
      assert abs(loss - uninterrupted[step]) <= 2e-6 * abs(loss), (step, resumed, uninterrupted)
