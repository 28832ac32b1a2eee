"""Samplers with classifier-free guidance on every data channel: DDPM ancestral (Ho et al.
2020, with a learned or the fixed posterior variance), DDIM with eta = 0 (Song et al. 2021) and
the rectified-flow Euler integrator (Liu et al. 2022).

``sample(method, predict, schedule, noise_BHWC, labels_B, key, steps=..., guidance=...,
null_class=...)`` -> x_BHWC in data space, where ``predict(z_BHWC, model_time_B, labels_B) ->
out_BHWC`` is the network (C channels, or 2C with a learned variance). Guidance runs the
conditional and the null-class rows as one batch and returns, on all C data channels,
uncond + s (cond - uncond); a learned variance is taken from the conditional half. DDPM/DDIM
steps run on ``schedule.respace(steps)``; their x predictions are clipped to [-1, 1] (the pixel
range; ``clip=False`` for latents). Every loop is a ``lax.scan``: jit the caller.

Known failures of public DiT-MoE samplers that these avoid, each tested in tests/test_dit_*.py:
NaN after the first DDPM step (log beta~_0 = log 0; here step 0's log variance is clipped and
its noise is off), guidance on only the first 3 of 4 latent channels.

Axes: B batch, H/W image, C channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.diffusion.schedules import RF_TIME_SCALE, DDPMSchedule

METHODS = ("ddpm", "ddim", "euler")


def guided(predict, scale: float, null_class: int, channels: int):
  """``predict`` with classifier-free guidance of scale ``scale`` on all ``channels`` data
  channels (the rest, a learned variance, from the conditional rows)."""

  def guided_predict(z_BHWC, time_B, labels_B):
    b = z_BHWC.shape[0]
    out_2BHWC = predict(jnp.concatenate([z_BHWC, z_BHWC]), jnp.concatenate([time_B, time_B]),
                        jnp.concatenate([labels_B, jnp.full_like(labels_B, null_class)]))
    cond, uncond = out_2BHWC[:b], out_2BHWC[b:]
    data = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
    return jnp.concatenate([data, cond[..., channels:]], axis=-1)

  return guided_predict


def _clip(x, clip: bool):
  return jnp.clip(x, -1.0, 1.0) if clip else x


def ddpm(predict, schedule: DDPMSchedule, noise_BHWC, labels_B, key, clip: bool = True):
  """Ancestral sampling over every step of ``schedule`` (respace it first)."""
  channels, b = noise_BHWC.shape[-1], noise_BHWC.shape[0]

  def step(z_BHWC, inputs):
    index, step_key = inputs
    index_B = jnp.full((b,), index)
    out = predict(z_BHWC, schedule.model_time(index_B), labels_B)
    x_pred = _clip(schedule.predict_x(z_BHWC, out[..., :channels], index_B), clip)
    mean = schedule.posterior_mean(x_pred, z_BHWC, index_B)
    if out.shape[-1] == 2 * channels:
      log_var = schedule.model_log_variance(out[..., channels:], index_B)
    else:
      log_var = schedule.take(schedule.posterior_log_variance_N, index_B)
    noise = jax.random.normal(step_key, z_BHWC.shape, z_BHWC.dtype)
    return mean + (index > 0) * jnp.exp(0.5 * log_var) * noise, None

  indices = jnp.arange(schedule.num_steps)[::-1]
  keys = jax.random.split(key, schedule.num_steps)
  z_BHWC, _ = jax.lax.scan(step, noise_BHWC, (indices, keys))
  return z_BHWC


def ddim(predict, schedule: DDPMSchedule, noise_BHWC, labels_B, clip: bool = True):
  """Deterministic DDIM (eta = 0) over every step of ``schedule`` (respace it first)."""
  channels, b = noise_BHWC.shape[-1], noise_BHWC.shape[0]
  abar_N = schedule.alphas_cumprod_N
  abar_prev_N = schedule.alphas_cumprod_prev_N

  def step(z_BHWC, index):
    index_B = jnp.full((b,), index)
    out = predict(z_BHWC, schedule.model_time(index_B), labels_B)
    x_pred = _clip(schedule.predict_x(z_BHWC, out[..., :channels], index_B), clip)
    abar, abar_prev = schedule.take(abar_N, index_B), schedule.take(abar_prev_N, index_B)
    eps = (z_BHWC - jnp.sqrt(abar) * x_pred) / jnp.sqrt(1.0 - abar)
    return jnp.sqrt(abar_prev) * x_pred + jnp.sqrt(1.0 - abar_prev) * eps, None

  z_BHWC, _ = jax.lax.scan(step, noise_BHWC, jnp.arange(schedule.num_steps)[::-1])
  return z_BHWC


def euler(predict, noise_BHWC, labels_B, steps: int):
  """Rectified flow: integrate dz/dt = v(z, t) from t = 1 (noise) to t = 0 in ``steps``
  uniform Euler steps."""
  channels, b = noise_BHWC.shape[-1], noise_BHWC.shape[0]
  times = jnp.linspace(1.0, 0.0, steps + 1)

  def step(z_BHWC, t_pair):
    t, t_next = t_pair
    v = predict(z_BHWC, jnp.full((b,), RF_TIME_SCALE * t), labels_B)[..., :channels]
    return z_BHWC + (t_next - t) * v, None

  z_BHWC, _ = jax.lax.scan(step, noise_BHWC, (times[:-1], times[1:]))
  return z_BHWC


def sample(method: str, predict, schedule: DDPMSchedule, noise_BHWC, labels_B, key, *,
           steps: int, guidance: float, null_class: int, clip: bool = True):
  """Samples of class ``labels_B`` from starting noise; see the module docstring."""
  if method not in METHODS:
    raise ValueError(f"sampler {method!r} is not one of {METHODS}")
  predict = guided(predict, guidance, null_class, noise_BHWC.shape[-1])
  if method == "euler":
    return euler(predict, noise_BHWC, labels_B, steps)
  spaced = schedule.respace(steps)
  if method == "ddpm":
    return ddpm(predict, spaced, noise_BHWC, labels_B, key, clip)
  return ddim(predict, spaced, noise_BHWC, labels_B, clip)
