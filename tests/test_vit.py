"""ViT-MoE: the model against a per-token numpy reference, task-conditioned routers, counting
against the built parameter tree, config errors, training and exact resume after SIGKILL."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vit_moe
from moejax import counting, validation
from moejax.errors import ConfigError
from moejax.models.vit import ViT, patchify
from tests.conftest import built_counts, train_straight_and_killed


def smoke_model(**overrides):
  config = vit_moe.get_config("smoke")
  config.model.update(overrides)
  return config


def _np(x):
  return np.asarray(x, np.float64)


def _rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _gelu(x):  # jax.nn.gelu's default: the tanh approximation
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reference_logits(params, images, model_cfg):
  """The smoke ViT (a dense block then an MoE block, dropless, no noise) in float64 numpy,
  with the MoE FFN computed token by token: sum over the top-k of gate * expert(token)."""
  p = {"/".join(map(str, k)): _np(v[...]) for k, v in nnx.to_flat_state(params)}
  eps, k_top = model_cfg.norm_eps, model_cfg.moe.top_k
  x = _np(patchify(jnp.asarray(images), model_cfg.patch_size)) @ p["patch_PD"] + p["patch_bias_D"]
  cls = np.broadcast_to(p["cls_1D"], (x.shape[0], 1, x.shape[2]))
  x = np.concatenate([cls, x], 1) + p["pos_TD"]
  for j in range(2):
    b = f"trunk/stages/0/blocks/{j}/"
    h = _rms(x, p[b + "attn_norm/scale"][0], eps)
    q = np.einsum("btd,dhk->bthk", h, p[b + "attn/wq_DHK"][0])
    kk = np.einsum("btd,dhk->bthk", h, p[b + "attn/wk_DGK"][0])
    v = np.einsum("btd,dhk->bthk", h, p[b + "attn/wv_DGK"][0])
    att = _softmax(np.einsum("bthk,bshk->bhts", q, kk) / np.sqrt(q.shape[-1]))
    x = x + np.einsum("bhts,bshk,hkd->btd", att, v, p[b + "attn/wo_HKD"][0])
    h = _rms(x, p[b + "ffn_norm/scale"][0], eps)
    if j == 0:
      y = _gelu(h @ p[b + "ffn/w_in_DF"][0]) @ p[b + "ffn/w_out_FD"][0]
    else:
      w_in, w_out = p[b + "ffn/experts/w_in_EDF"][0], p[b + "ffn/experts/w_out_EFD"][0]
      y = np.zeros_like(h)
      for bi in range(h.shape[0]):
        for t in range(h.shape[1]):
          gates = _softmax(h[bi, t] @ p[b + "ffn/router/w_DE"][0])
          for e in np.argsort(-gates)[:k_top]:
            y[bi, t] += gates[e] * (_gelu(h[bi, t] @ w_in[e]) @ w_out[e])
    x = x + y
  x = _rms(x, p["final_norm/scale"], eps)
  return x[:, 0] @ p["heads/0/w_DV"]


def test_vit_matches_a_per_token_reference():
  config = smoke_model(group_images=None)
  config.model.moe.update(capacity_factor=None)
  model = ViT.from_config(config.model, rngs=nnx.Rngs(3))
  model.eval()
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  (logits,), aux = model(jnp.asarray(images))
  expected = reference_logits(nnx.state(model, nnx.Param), images, config.model)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=2e-4, atol=2e-5)
  assert {"importance_loss", "load_loss"} <= set(aux)


def test_patchify_order():
  images = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
  patches = np.asarray(patchify(jnp.asarray(images), 2))
  assert patches.shape == (2, 4, 4)
  np.testing.assert_array_equal(patches[0, 1], [2, 3, 6, 7])  # top-right 2x2 patch
  np.testing.assert_array_equal(patches[1, 2], [24, 25, 28, 29])  # bottom-left of image 1


@pytest.mark.parametrize("routing", ["shared", "per_task", "one_hot"])
def test_task_conditioned_router_logits(routing):
  config = smoke_model(num_classes=(10, 2), group_images=None)
  config.data.tasks = ("class", "parity")
  config.model.moe.update(num_tasks=2, task_routing=routing)
  model = ViT.from_config(config.model, rngs=nnx.Rngs(0))
  router = model.trunk.stages[0].blocks[1].ffn.router
  x_TD = jax.random.normal(jax.random.key(1), (6, 32))
  task_T = jnp.array([0, 1, 0, 1, 1, 0])
  sliced = jax.tree.map(lambda v: v[0], nnx.state(router))
  graphdef = nnx.graphdef(router)
  single = nnx.merge(graphdef, sliced)
  logits = np.asarray(single.logits(x_TD, task_T))
  state = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(sliced)}
  x = np.asarray(x_TD)
  if routing == "per_task":
    expected = np.stack([x[t] @ state["w_NDE"][task] for t, task in enumerate(task_T)])
  else:
    expected = x @ state["w_DE"]
    if routing == "one_hot":
      expected = expected + state["w_task_NE"][np.asarray(task_T)]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # A task masked from an expert never routes to it (Edge-MoE pruning at inference).
  mask_NE = np.ones((2, 4), np.float32)
  mask_NE[1, :2] = 0.0
  single.task_mask_NE[...] = jnp.asarray(mask_NE)
  single.deterministic = True
  routing_out, _ = single(x_TD, task_T)
  chosen = np.asarray(routing_out.expert_ids_TK)[np.asarray(task_T) == 1]
  weights = np.asarray(routing_out.weights_TK)[np.asarray(task_T) == 1]
  assert np.all((chosen >= 2) | (weights < 1e-6))
  with pytest.raises(ValueError, match="pass the task id"):
    single(x_TD)


def test_task_masks_set_per_layer_in_depth_order():
  config = smoke_model(num_classes=(10, 2), num_layers=4, moe_every=1)
  config.model.moe.update(num_tasks=2)
  model = ViT.from_config(config.model, rngs=nnx.Rngs(0))
  mask_MNE = np.arange(4 * 2 * 4, dtype=np.float32).reshape(4, 2, 4)
  model.trunk.set_task_expert_masks(mask_MNE)
  got = model.trunk.stages[0].blocks[0].ffn.router.task_mask_NE[...]
  np.testing.assert_array_equal(np.asarray(got), mask_MNE)


def built_vit_counts(model_cfg):
  return built_counts(nnx.eval_shape(lambda: ViT.from_config(model_cfg, rngs=nnx.Rngs(0))),
                      model_cfg.moe)


@pytest.mark.parametrize("preset,overrides", [
    ("smoke", {}), ("tiny", {}), ("tiny", {"moe_every": 0}), ("tiny", {"pool": "gap"}),
    ("tiny_tasks", {}), ("tiny", {"num_layers": 6, "moe_last_n": 2}),
    ("tiny", {"moe": {"num_tasks": 1, "task_routing": "one_hot"}}),
    ("s32", {}), ("b16", {"num_layers": 4}),
])
def test_vit_counts_equal_built_parameter_tree(preset, overrides):
  config = vit_moe.get_config(preset)
  moe = overrides.pop("moe", {})
  config.model.update(overrides)
  config.model.moe.update(moe)
  summary = counting.vit_summary(config)
  assert (summary["total_params"], summary["active_params"]) == built_vit_counts(config.model)
  assert summary["train_flops_per_image"] == 3 * summary["forward_flops_per_image"] > 0


def test_vmoe_family_counts():
  """V-MoE's published sizes (Riquelme et al. 2021): B/16 every-2 E=32 about 0.98B, L/16
  every-2 E=32 about 3.4B; ours lack biases and LayerNorm shifts, so slightly smaller."""
  b16 = counting.vit_summary(vit_moe.get_config("b16"))["total_params"]
  l16 = counting.vit_summary(vit_moe.get_config("l16"))["total_params"]
  assert 0.95e9 < b16 < 0.98e9 and 3.3e9 < l16 < 3.5e9


@pytest.mark.parametrize("field,value,message", [
    ("patch_size", 3, "does not divide config.model.image_size"),
    ("num_classes", (10, 3), "one entry per task"),
    ("pool", "max", "config.model.pool='max'"),
    ("group_images", 5, "config.model.group_images=5"),
])
def test_bad_vit_configs_name_the_field(field, value, message):
  config = vit_moe.get_config("smoke")
  config.model[field] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validation.validate_config(config)


def test_data_classes_must_match_heads():
  from moejax.tasks.vit import ViTTask  # pylint: disable=import-outside-toplevel
  config = vit_moe.get_config("smoke")
  config.model.num_classes = (7,)
  with pytest.raises(ConfigError, match="task 'class' of 'digits' has 10 classes"):
    ViTTask().make_source(config, "train")


@pytest.mark.slow
def test_vit_trains_and_resumes_exactly_after_sigkill(tmp_path):
  straight, killed = train_straight_and_killed("configs/vit_moe.py:smoke", tmp_path)
  results = json.loads((straight / "eval.json").read_text())
  assert results["test_images"] == 297 and results["test_accuracy"] > 0.3  # chance: 0.1
  resumed = json.loads((killed / "eval.json").read_text())
  assert resumed["resumed_from_step"] % 10 == 0 and resumed["resumed_from_step"] > 0
  assert resumed["test_accuracy"] == results["test_accuracy"]
