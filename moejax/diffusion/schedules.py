"""The DDPM noise schedule (Ho et al. 2020) and the rectified-flow path (Liu et al. 2022;
Esser et al. 2024), as used by DiT (Peebles & Xie 2023) and DiT-MoE (Fei et al. 2024).

DDPM: N steps of linear betas; z_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps; the model predicts
eps, and optionally an interpolation v in [-1, 1] between the log variances log beta_t and
log beta~_t of the reverse step (learned variance, Nichol & Dhariwal 2021). ``respace(steps)``
keeps a subset of the steps and recomputes the betas from the kept abar (the sampler's schedule).

Rectified flow: t in (0, 1) drawn as sigmoid(N(0, 1)) (logit-normal, Esser et al. 2024),
z_t = (1 - t) x + t eps, velocity target eps - x; t = 1 is pure noise. The model reads the time
as ``RF_TIME_SCALE * t`` so that both objectives feed the timestep embedder the same range.

Tables are float64 numpy; ``take`` gathers rows for a batch as float32 [B, 1, 1, 1].
Axes: B batch, H/W image, C channels, N schedule steps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from moejax.errors import require

RF_TIME_SCALE = 1000.0


@dataclasses.dataclass(frozen=True, eq=False)
class DDPMSchedule:
  """A discrete schedule: ``betas_N`` and, for a respaced one, the original step of each kept
  step (``timesteps_N``, what the model reads)."""
  betas_N: np.ndarray
  timesteps_N: np.ndarray

  @classmethod
  def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4,
             beta_end: float = 2e-2) -> "DDPMSchedule":
    p = "config.model.diffusion"
    require(num_timesteps >= 2, f"{p}.num_timesteps={num_timesteps} must be >= 2")
    require(0 < beta_start <= beta_end < 1, f"{p}: betas must satisfy 0 < beta_start="
                                            f"{beta_start} <= beta_end={beta_end} < 1")
    return cls(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64),
               np.arange(num_timesteps))

  @property
  def num_steps(self) -> int:
    return len(self.betas_N)

  @functools.cached_property
  def alphas_cumprod_N(self) -> np.ndarray:
    return np.cumprod(1.0 - self.betas_N)

  @functools.cached_property
  def alphas_cumprod_prev_N(self) -> np.ndarray:
    return np.append(1.0, self.alphas_cumprod_N[:-1])

  @functools.cached_property
  def posterior_variance_N(self) -> np.ndarray:
    """beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), the variance of q(z_{t-1} | z_t, x)."""
    return self.betas_N * (1.0 - self.alphas_cumprod_prev_N) / (1.0 - self.alphas_cumprod_N)

  @functools.cached_property
  def posterior_log_variance_N(self) -> np.ndarray:
    """log beta~_t with step 0 (where beta~ = 0) replaced by step 1's value, so that no log(0)
    or division by zero reaches a sampler (the NaN-after-the-first-step failure)."""
    var_N = np.append(self.posterior_variance_N[1], self.posterior_variance_N[1:])
    return np.log(var_N)

  @functools.cached_property
  def posterior_mean_coefs(self) -> tuple[np.ndarray, np.ndarray]:
    """(c_x, c_z): the mean of q(z_{t-1} | z_t, x) is c_x x + c_z z_t."""
    abar, abar_prev = self.alphas_cumprod_N, self.alphas_cumprod_prev_N
    c_x = self.betas_N * np.sqrt(abar_prev) / (1.0 - abar)
    c_z = (1.0 - abar_prev) * np.sqrt(1.0 - self.betas_N) / (1.0 - abar)
    return c_x, c_z

  def respace(self, steps: int) -> "DDPMSchedule":
    """``steps`` evenly spaced steps of this schedule (last one kept), betas recomputed so the
    kept abar are unchanged (Nichol & Dhariwal 2021, section 4)."""
    require(1 <= steps <= self.num_steps,
            f"config.sample.steps={steps} must be in [1, {self.num_steps}]")
    keep_N = np.unique(np.round(np.linspace(0, self.num_steps - 1, steps)).astype(int))
    abar_N = self.alphas_cumprod_N[keep_N]
    betas_N = 1.0 - abar_N / np.append(1.0, abar_N[:-1])
    return DDPMSchedule(betas_N, self.timesteps_N[keep_N])

  def take(self, table_N: np.ndarray, index_B):
    """Rows of a table for step indices ``index_B``, float32 [B, 1, 1, 1]."""
    return jnp.asarray(table_N, jnp.float32)[index_B][:, None, None, None]

  def noisy(self, x_BHWC, eps_BHWC, index_B):
    """z_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps."""
    abar = self.take(self.alphas_cumprod_N, index_B)
    return jnp.sqrt(abar) * x_BHWC + jnp.sqrt(1.0 - abar) * eps_BHWC

  def predict_x(self, z_BHWC, eps_BHWC, index_B):
    """x from z_t and predicted noise: (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    abar = self.take(self.alphas_cumprod_N, index_B)
    return (z_BHWC - jnp.sqrt(1.0 - abar) * eps_BHWC) / jnp.sqrt(abar)

  def posterior_mean(self, x_BHWC, z_BHWC, index_B):
    c_x, c_z = self.posterior_mean_coefs
    return self.take(c_x, index_B) * x_BHWC + self.take(c_z, index_B) * z_BHWC

  def model_log_variance(self, v_BHWC, index_B):
    """Learned variance: log var = f log beta_t + (1 - f) log beta~_t, f = (v + 1) / 2."""
    frac = (v_BHWC + 1.0) / 2.0
    return (frac * self.take(np.log(self.betas_N), index_B)
            + (1.0 - frac) * self.take(self.posterior_log_variance_N, index_B))

  def model_time(self, index_B):
    """What the model reads as the time of step indices ``index_B`` (original step numbers)."""
    return jnp.asarray(self.timesteps_N, jnp.float32)[index_B]


def rectified_flow_noisy(x_BHWC, eps_BHWC, t_B):
  """z_t = (1 - t) x + t eps."""
  t = t_B[:, None, None, None]
  return (1.0 - t) * x_BHWC + t * eps_BHWC
