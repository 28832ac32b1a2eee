"""DiT-MoE samplers: finite samples in the data's range from trained smoke models (DDPM
ancestral, DDIM, rectified-flow Euler), guidance 1.0 equals the conditional model, guidance on
every data channel, no NaN from the first DDPM step, respacing keeps the kept abar."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit_moe
from moejax.diffusion import samplers
from moejax.diffusion.schedules import DDPMSchedule
from moejax.tasks import dit as dit_task
from moejax.training import trainer
from moejax.training.restore import restore_run

STEPS = 150


def _train(tmp_path_factory, name, **model):
  config = dit_moe.get_config("smoke")
  config.model.update(model.pop("model", {}))
  config.model.diffusion.update(model)
  config.train.update(steps=STEPS, log_every=50, checkpoint_every=STEPS, progress_bar=False)
  if config.model.diffusion.objective == "rectified_flow":
    config.sample.sampler = "euler"
  workdir = str(tmp_path_factory.mktemp(name))
  trainer.train(config, workdir)
  return restore_run(workdir)


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
  return _train(tmp_path_factory, "ddpm", model={"learn_sigma": True})


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
  return _train(tmp_path_factory, "flow", objective="rectified_flow")


def _digits_mean():
  images = dit_task.load_split("digits", "train", 8, 1).images_NHWC
  return float(np.mean(2 * images - 1))


def _samples(run, sampler, steps, guidance=1.5, count=40):
  labels = np.arange(count) % 10
  with run.context():
    return dit_task.generate(run.config, run.graphdef, dit_task.inference_params(run.state),
                             run.state.model_state, labels, sampler=sampler, steps=steps,
                             guidance=guidance)


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("ddim", 25)])
def test_ddpm_samplers_give_finite_images_in_range(ddpm_run, sampler, steps):
  images = _samples(ddpm_run, sampler, steps)
  assert images.shape == (40, 8, 8, 1) and np.all(np.isfinite(images))
  assert images.min() >= -1.0 and images.max() <= 1.0
  # Not noise: the mean brightness is the data's (noise would average 0), within 0.25.
  assert abs(images.mean() - _digits_mean()) < 0.25, (images.mean(), _digits_mean())


@pytest.mark.slow
def test_flow_sampler_gives_finite_images_in_range(flow_run):
  """Euler samples are not clipped, and a flow model of 150 steps overshoots the saturated
  background a little (measured: 98% of the pixels within 1.25 of 0, 99th percentile of
  |x| 1.32, max 2.1, at guidance 1): we require 95% within [-1.25, 1.25] and none beyond 3."""
  images = _samples(flow_run, "euler", 25, guidance=1.0)
  assert np.all(np.isfinite(images)) and np.abs(images).max() < 3.0
  assert np.mean(np.abs(images) <= 1.25) > 0.95, np.quantile(np.abs(images), [0.5, 0.99, 1])
  assert abs(images.mean() - _digits_mean()) < 0.25, (images.mean(), _digits_mean())


@pytest.mark.slow
def test_guidance_one_equals_the_conditional_model(ddpm_run, sampler="ddim"):
  """Guidance 1 runs the null-class rows in the same batch; dropless routing is per token, so
  the result must be the conditional model's, whatever the rest of the batch holds."""
  run = ddpm_run
  with run.context():
    predict = dit_task.model_predict(run.graphdef, dit_task.inference_params(run.state),
                                     run.state.model_state)
    noise = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
    labels = jnp.arange(6)
    key = jax.random.key(1)
    sched = DDPMSchedule.linear()
    guided = samplers.sample(sampler, predict, sched, noise, labels, key, steps=10,
                             guidance=1.0, null_class=10)
    plain = getattr(samplers, sampler)(predict, sched.respace(10), noise, labels,
                                       *([key] if sampler == "ddpm" else []))
  np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), atol=2e-5)


def test_guidance_acts_on_every_data_channel():
  """A 4-channel latent with learned variance (8 outputs): all 4 data channels are guided, the
  variance channels come from the conditional rows."""
  def predict(z, t, y):
    cond = (y < 10).astype(jnp.float32)[:, None, None, None]
    data = jnp.broadcast_to(1.0 + cond * jnp.arange(1.0, 5.0), z.shape)
    var = jnp.broadcast_to(cond * 0.5 - 0.25, z.shape)
    return jnp.concatenate([data, var], -1)

  guided = samplers.guided(predict, 3.0, 10, 4)
  out = guided(jnp.zeros((2, 2, 2, 4)), jnp.zeros(2), jnp.array([1, 2]))
  np.testing.assert_allclose(np.asarray(out[0, 0, 0, :4]), 1.0 + 3.0 * np.arange(1.0, 5.0))
  np.testing.assert_allclose(np.asarray(out[0, 0, 0, 4:]), 0.25)


@pytest.mark.parametrize("v", [-1.0, 0.0, 1.0])
def test_full_ddpm_chain_stays_finite_with_learned_variance(v):
  """All 1000 steps, to step 0 where beta~ = 0: no NaN, no inf, at any learned variance."""
  sched = DDPMSchedule.linear()
  predict = lambda z, t, y: jnp.concatenate([0.1 * z, jnp.full_like(z, v)], -1)
  out = samplers.ddpm(predict, sched, jax.random.normal(jax.random.key(0), (2, 4, 4, 1)),
                      jnp.zeros(2, jnp.int32), jax.random.key(1))
  assert np.all(np.isfinite(np.asarray(out))) and np.abs(np.asarray(out)).max() <= 1.0


def test_respace_keeps_the_kept_cumulative_alphas():
  sched = DDPMSchedule.linear()
  spaced = sched.respace(10)
  assert spaced.num_steps == 10 and spaced.timesteps_N[0] == 0 and spaced.timesteps_N[-1] == 999
  np.testing.assert_allclose(spaced.alphas_cumprod_N, sched.alphas_cumprod_N[spaced.timesteps_N])
