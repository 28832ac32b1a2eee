"""DiT-MoE model: the forward pass against a per-token float64 numpy reference (adaLN-Zero,
softmax top-k not renormalised, shared expert), the expert-level balance loss against the
paper's formula, the objectives, the EMA, counting against the built tree and the paper's
sizes, and config errors before any compute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import dit_moe
from moejax import counting, validation
from moejax.diffusion import objectives
from moejax.diffusion.schedules import DDPMSchedule
from moejax.errors import ConfigError
from moejax.models import dit as dit_lib
from moejax.models.vit import patchify
from moejax.moe import losses
from moejax.moe.router_functions import softmax_top_k
from moejax.training import ema as ema_lib, task as task_lib
from tests.conftest import built_counts


def _np(x):
  return np.asarray(x, np.float64)


def _rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _silu(x):
  return x / (1 + np.exp(-x))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _swiglu(h, gate, up, down):
  return (_silu(h @ gate) * (h @ up)) @ down


def randomized(model, seed=0):
  """Every parameter redrawn (the zero-initialised adaLN and output maps too), so the
  reference comparison exercises every path."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  values = jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype), state)
  nnx.update(model, values)
  return model


def reference_output(params, z, t, labels, model_cfg):
  """The smoke DiT-MoE (2 MoE blocks) in float64 numpy, the MoE token by token:
  sum over the top-k of softmax-prob * SwiGLU expert(token) + shared SwiGLU(token)."""
  p = {"/".join(map(str, k)): _np(v[...]) for k, v in nnx.to_flat_state(params)}
  eps, k_top, patch = model_cfg.norm_eps, model_cfg.moe.top_k, model_cfg.patch_size
  grid = model_cfg.image_size // patch
  x = _np(patchify(jnp.asarray(z), patch)) @ p["patch_embed/w_IO"] + p["patch_embed/b_O"]
  x = x + dit_lib.sincos_positions(grid, model_cfg.d_model)
  freqs = np.exp(-np.log(10000.0) * np.arange(128) / 128)
  ang = t[:, None] * freqs[None]
  tf = np.concatenate([np.cos(ang), np.sin(ang)], -1)
  h = _silu(tf @ p["conditioner/t_in/w_IO"] + p["conditioner/t_in/b_O"])
  c = h @ p["conditioner/t_out/w_IO"] + p["conditioner/t_out/b_O"] + p["conditioner/class_KD"][
      labels]
  for j in range(model_cfg.num_layers):
    b = "trunk/stages/0/blocks/0/"
    w = {k[len(b):]: v[j] for k, v in p.items() if k.startswith(b)}
    mods = np.split(_silu(c) @ w["modulation/w_CX"] + w["modulation/b_X"], 6, -1)
    sh1, sc1, g1, sh2, sc2, g2 = (m[:, None, :] for m in mods)
    hh = _rms(x, w["attn_norm/scale"], eps) * (1 + sc1) + sh1
    q = np.einsum("btd,dhk->bthk", hh, w["attn/wq_DHK"])
    kk = np.einsum("btd,dhk->bthk", hh, w["attn/wk_DGK"])
    v = np.einsum("btd,dhk->bthk", hh, w["attn/wv_DGK"])
    att = _softmax(np.einsum("bthk,bshk->bhts", q, kk) / np.sqrt(q.shape[-1]))
    x = x + g1 * np.einsum("bhts,bshk,hkd->btd", att, v, w["attn/wo_HKD"])
    hh = _rms(x, w["ffn_norm/scale"], eps) * (1 + sc2) + sh2
    y = np.zeros_like(hh)
    for bi in range(hh.shape[0]):
      for ti in range(hh.shape[1]):
        tok = hh[bi, ti]
        probs = _softmax(tok @ w["ffn/router/w_DE"])
        for e in np.argsort(-probs)[:k_top]:
          y[bi, ti] += probs[e] * _swiglu(tok, w["ffn/experts/w_gate_EDF"][e],
                                          w["ffn/experts/w_up_EDF"][e],
                                          w["ffn/experts/w_down_EFD"][e])
        y[bi, ti] += _swiglu(tok, w["ffn/shared/w_gate_DF"], w["ffn/shared/w_up_DF"],
                             w["ffn/shared/w_down_FD"])
    x = x + g2 * y
  shift, scale = np.split(_silu(c) @ p["final_modulation/w_CX"] + p["final_modulation/b_X"], 2,
                          -1)
  hh = _rms(x, p["final_norm/scale"], eps) * (1 + scale[:, None]) + shift[:, None]
  out = hh @ p["out/w_IO"] + p["out/b_O"]
  return _np(dit_lib.unpatchify(jnp.asarray(out), grid, patch))


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_dit_matches_a_per_token_reference(learn_sigma):
  config = dit_moe.get_config("smoke")
  config.model.learn_sigma = learn_sigma
  model = randomized(dit_lib.DiT.from_config(config.model, rngs=nnx.Rngs(1)))
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
  t = np.array([0.0, 500.0, 999.0], np.float32)
  labels = np.array([0, 7, 10], np.int32)  # 10: the null class
  out, aux = model(jnp.asarray(z), jnp.asarray(t), jnp.asarray(labels))
  assert out.shape == (3, 8, 8, 2 if learn_sigma else 1)
  expected = reference_output(nnx.state(model, nnx.Param), z, t, labels, config.model)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=2e-4, atol=2e-4)
  assert {"load_balance_loss", "router_z_loss"} <= set(aux)


def test_zero_init_gives_zero_output_and_identity_blocks():
  """adaLN-Zero: at initialisation every gate and the output map are zero."""
  config = dit_moe.get_config("smoke")
  model = dit_lib.DiT.from_config(config.model, rngs=nnx.Rngs(0))
  out, _ = model(jnp.ones((2, 8, 8, 1)), jnp.array([3.0, 4.0]), jnp.array([1, 2]))
  np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_class_table_init_follows_class_embed_std(std):
  """``model.class_embed_std`` sets the label table's init (DiT's 0.02 by default)."""
  config = dit_moe.get_config("smoke")
  config.model.class_embed_std = std
  table = np.asarray(dit_lib.DiT.from_config(config.model, rngs=nnx.Rngs(0))
                     .conditioner.class_KD[...])
  assert table.shape == (config.model.num_classes + 1, config.model.d_model)
  assert abs(table.std() / std - 1) < 0.1, table.std()


def test_routing_depends_on_timestep_and_class():
  """The router sees the modulated tokens: same image, other time or class, other logits."""
  config = dit_moe.get_config("smoke")
  config.model.moe.return_choices = True
  model = randomized(dit_lib.DiT.from_config(config.model, rngs=nnx.Rngs(2)), seed=3)
  # Random weights of std 0.3 make the timestep MLP's output ~20x the class embedding's.
  model.conditioner.class_KD[...] = 20 * model.conditioner.class_KD[...]
  z = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8, 1)), jnp.float32)
  base = model(z, jnp.array([10.0]), jnp.array([1]))[1]["expert_choices"]
  other_t = model(z, jnp.array([900.0]), jnp.array([1]))[1]["expert_choices"]
  assert not np.array_equal(base, other_t)
  other_y = model(z, jnp.array([10.0]), jnp.array([8]))[1]["expert_choices"]
  assert not np.array_equal(base, other_y)


def test_balance_loss_is_the_papers_expert_level_loss():
  """0.01 * sum_i P_i f_i, f_i = E * (top-k slots to i) / (k * B * T), over all tokens."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(96, 8)).astype(np.float32)
  k, experts = 2, 8
  routing = softmax_top_k(jnp.asarray(logits), k, False, None)
  probs = _softmax(_np(logits))
  top = np.argsort(-probs, -1)[:, :k]
  counts = np.bincount(top.reshape(-1), minlength=experts)
  f = experts * counts / (k * logits.shape[0])
  expected = np.sum(probs.mean(0) * f)
  np.testing.assert_allclose(float(losses.load_balance_loss(routing)), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(routing.weights_TK),
                             np.take_along_axis(probs, top, -1), rtol=1e-5)  # not renormalised
  weights = task_lib.aux_loss_weights(dit_moe.get_config("tiny"))
  assert weights == {"load_balance_loss": 0.01, "router_z_loss": 0.0}


def test_rectified_flow_loss_is_velocity_mse():
  rng = np.random.default_rng(0)
  x, eps = (rng.normal(size=(4, 4, 4, 1)).astype(np.float32) for _ in range(2))
  t = np.array([0.1, 0.4, 0.6, 0.9], np.float32)
  seen = {}

  def predict(z, time):
    seen.update(z=np.asarray(z), time=np.asarray(time))
    return jnp.zeros_like(z)

  loss, _ = objectives.loss("rectified_flow", DDPMSchedule.linear(), predict, x, eps, t)
  np.testing.assert_allclose(seen["z"], (1 - t)[:, None, None, None] * x
                             + t[:, None, None, None] * eps, rtol=1e-6)
  np.testing.assert_allclose(seen["time"], 1000 * t, rtol=1e-6)
  np.testing.assert_allclose(float(loss), np.mean((eps - x) ** 2), rtol=1e-5)


def test_ddpm_loss_and_learned_variance_bound():
  """Epsilon MSE is zero for the true noise; the bound's KL is zero when the model's variance
  is the posterior's (v = -1) and its mean the true one, and positive otherwise."""
  sched = DDPMSchedule.linear()
  rng = np.random.default_rng(0)
  x = np.clip(rng.normal(size=(3, 4, 4, 1)), -1, 1).astype(np.float32)
  eps = rng.normal(size=x.shape).astype(np.float32)
  t = np.array([5, 300, 999], np.float32)
  perfect = lambda z, time: jnp.concatenate([jnp.asarray(eps), -jnp.ones_like(z)], -1)
  loss, metrics = objectives.loss("ddpm", sched, perfect, x, eps, t)
  assert float(metrics["mse"]) < 1e-10 and abs(float(metrics["vlb_bits"])) < 1e-4
  wrong = lambda z, time: jnp.concatenate([jnp.asarray(eps), jnp.ones_like(z)], -1)
  assert float(objectives.loss("ddpm", sched, wrong, x, eps, t)[1]["vlb_bits"]) > 1e-3
  np.testing.assert_allclose(float(loss), float(metrics["vlb_bits"]), atol=1e-6)


def test_param_ema_tracks_the_updated_parameters():
  params = {"w": jnp.array([1.0, 2.0])}
  tx = ema_lib.with_param_ema(optax.sgd(1.0), 0.9)
  state = tx.init(params)
  grads = {"w": jnp.array([1.0, -1.0])}
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(ema_lib.ema_params(state)["w"]),
                             0.9 * np.array([1.0, 2.0]) + 0.1 * np.asarray(new["w"]), rtol=1e-6)
  assert ema_lib.ema_params(optax.sgd(1.0).init(params)) is None


@pytest.mark.parametrize("preset,overrides", [
    ("smoke", {}), ("tiny", {}), ("tiny", {"moe_every": 0}), ("smoke", {"learn_sigma": True}),
    ("tiny", {"moe": {"shared_d_ff": 0}}), ("paper", {"size": "S"}),
    ("paper", {"size": "G", "num_experts": 16, "num_layers": 2}),
])
def test_dit_counts_equal_built_parameter_tree(preset, overrides):
  config = dit_moe.get_config(preset)
  moe = overrides.pop("moe", {})
  config.model.update(overrides)
  config.model.moe.update(moe)
  if config.model.size and "num_layers" in overrides:  # a shallow model of the size's width
    config.model.size = None
    d, _, heads = dit_lib.SIZES[overrides["size"]]
    config.model.update(d_model=d, head_dim=d // heads)
  summary = counting.dit_summary(config)
  model = nnx.eval_shape(lambda: dit_lib.DiT.from_config(config.model, rngs=nnx.Rngs(0)))
  trunk = dit_lib.trunk_config(config.model)
  assert (summary["total_params"], summary["active_params"]) == built_counts(model, trunk.moe)
  assert summary["train_flops_per_image"] == 3 * summary["forward_flops_per_image"] > 0


@pytest.mark.parametrize("size,experts,total,active", [
    ("S", 8, 199e6, 71e6), ("B", 8, 795e6, 286e6), ("XL", 8, 4.1e9, 1.5e9),
    ("G", 16, 16.5e9, 3.1e9)])
def test_paper_sizes(size, experts, total, active):
  """Fei et al. 2024 table 1 (ImageNet 256, latents 32x32x4, patch 2, learned variance). Our
  trunk has no attention biases and RMSNorm scales; totals agree within 2%, and active
  counts within 3% (the paper's G active count, 3.1B, is rounded down from ours, 3.18B)."""
  config = dit_moe.get_config("paper")
  config.model.update(size=size, num_experts=experts)
  summary = counting.dit_summary(config)
  assert abs(summary["total_params"] / total - 1) < 0.02
  assert abs(summary["active_params"] / active - 1) < 0.03


@pytest.mark.parametrize("path,value,message", [
    ("model.size", "XXL", "config.model.size='XXL' is not one of"),
    ("model.patch_size", 3, "does not divide config.model.image_size"),
    ("model.diffusion.objective", "score", "config.model.diffusion.objective='score'"),
    ("sample.sampler", "euler", "config.sample.sampler='euler' does not sample a 'ddpm'"),
    ("data.class_dropout", 1.0, "config.data.class_dropout=1.0"),
    ("model.diffusion.beta_end", 2.0, "beta_end=2.0"),
    ("model.class_embed_std", 0.0, "config.model.class_embed_std=0.0 must be positive"),
])
def test_bad_dit_configs_name_the_field(path, value, message):
  config = dit_moe.get_config("smoke")
  config.update_from_flattened_dict({path: value})
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validation.validate_config(config)
