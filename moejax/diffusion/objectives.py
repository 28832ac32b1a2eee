"""Training objectives of a diffusion model: DDPM epsilon prediction (Ho et al. 2020), with the
hybrid loss of a learned variance (Nichol & Dhariwal 2021, as in DiT), and rectified flow
(velocity eps - x; Liu et al. 2022, Esser et al. 2024).

``loss(objective, schedule, predict, x_BHWC, eps_BHWC, t_B)`` -> (scalar loss, metrics), where
``predict(z_BHWC, model_time_B) -> out_BHWC`` is the conditioned model; ``out`` has C channels,
or 2C with a learned variance (the second half is v in [-1, 1], schedules.DDPMSchedule).
``t_B`` is the batch's time: a DDPM step index (integer-valued float) or a rectified-flow time
in (0, 1); batches draw it on the host (diffusion/source.py), so a train step is a pure function
of (state, batch) and resumes exactly.

Axes: B batch, H/W image, C channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moejax.diffusion.schedules import RF_TIME_SCALE, DDPMSchedule, rectified_flow_noisy

OBJECTIVES = ("ddpm", "rectified_flow")
_BIN = 1.0 / 255.0  # half the width of one 8-bit level on [-1, 1]


def mean_per_example(x_BHWC):
  return jnp.mean(x_BHWC, axis=tuple(range(1, x_BHWC.ndim)))


def normal_kl(mean1, log_var1, mean2, log_var2):
  """KL(N(mean1, exp log_var1) || N(mean2, exp log_var2)), elementwise, nats."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def discretized_gaussian_nll(x_BHWC, mean_BHWC, log_var_BHWC):
  """-log P(x) of 8-bit data in [-1, 1] under N(mean, var) integrated over each level's bin
  (the edge bins reach to -inf / +inf), nats, elementwise (Ho et al. 2020, section 3.3)."""
  inv_std = jnp.exp(-0.5 * log_var_BHWC)
  cdf_hi = jax.scipy.stats.norm.cdf(inv_std * (x_BHWC - mean_BHWC + _BIN))
  cdf_lo = jax.scipy.stats.norm.cdf(inv_std * (x_BHWC - mean_BHWC - _BIN))
  prob = jnp.where(x_BHWC < -0.999, cdf_hi, jnp.where(x_BHWC > 0.999, 1.0 - cdf_lo,
                                                       cdf_hi - cdf_lo))
  return -jnp.log(jnp.maximum(prob, 1e-12))


def ddpm_vlb(schedule: DDPMSchedule, x_BHWC, z_BHWC, eps_pred_BHWC, v_BHWC, index_B):
  """The variational bound term of a learned variance, bits per dimension [B]: KL between the
  true and the model's reverse step for t > 0, the decoder's NLL at t = 0. The mean is frozen
  (stop_gradient on eps), so this term trains only the variance."""
  true_mean = schedule.posterior_mean(x_BHWC, z_BHWC, index_B)
  true_log_var = schedule.take(schedule.posterior_log_variance_N, index_B)
  x_pred = schedule.predict_x(z_BHWC, jax.lax.stop_gradient(eps_pred_BHWC), index_B)
  model_mean = schedule.posterior_mean(x_pred, z_BHWC, index_B)
  model_log_var = schedule.model_log_variance(v_BHWC, index_B)
  kl_B = mean_per_example(normal_kl(true_mean, true_log_var, model_mean, model_log_var))
  nll_B = mean_per_example(discretized_gaussian_nll(x_BHWC, model_mean, model_log_var))
  return jnp.where(index_B == 0, nll_B, kl_B) / np.log(2.0)


def loss(objective: str, schedule: DDPMSchedule, predict, x_BHWC, eps_BHWC, t_B):
  """(scalar loss, metrics) of one batch; see the module docstring."""
  channels = x_BHWC.shape[-1]
  if objective == "rectified_flow":
    z_BHWC = rectified_flow_noisy(x_BHWC, eps_BHWC, t_B)
    out_BHWC = predict(z_BHWC, RF_TIME_SCALE * t_B)
    mse_B = mean_per_example(jnp.square(out_BHWC[..., :channels] - (eps_BHWC - x_BHWC)))
    return jnp.mean(mse_B), {"mse": jnp.mean(mse_B)}
  if objective != "ddpm":
    raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
  index_B = t_B.astype(jnp.int32)
  z_BHWC = schedule.noisy(x_BHWC, eps_BHWC, index_B)
  out_BHWC = predict(z_BHWC, schedule.model_time(index_B))
  eps_pred = out_BHWC[..., :channels]
  mse_B = mean_per_example(jnp.square(eps_pred - eps_BHWC))
  metrics = {"mse": jnp.mean(mse_B)}
  if out_BHWC.shape[-1] == 2 * channels:
    vlb_B = ddpm_vlb(schedule, x_BHWC, z_BHWC, eps_pred, out_BHWC[..., channels:], index_B)
    metrics["vlb_bits"] = jnp.mean(vlb_B)
    return jnp.mean(mse_B + vlb_B), metrics
  return jnp.mean(mse_B), metrics
