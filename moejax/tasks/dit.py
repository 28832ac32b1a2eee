"""The class-conditional diffusion task (DiT-MoE, moejax/models/dit.py): DDPM or rectified-flow
training (moejax/diffusion/objectives.py; the objective is the model's, ``model.diffusion``) on
pixel images (Fashion-MNIST, digits, any ``images.load_images`` form) or on precomputed VAE
latents (``npz:PATH``: arrays ``latents`` [N, H, W, C] and ``labels`` [N]; the same file serves
the held-out loss).

Batches (moejax/diffusion/source.py) carry the noise, the time and the dropped labels, drawn on
the host per (seed, step). The optimizer keeps an EMA of the weights (training/ema.py).
``generate`` samples from given weights (the EMA's after training); with
``config.eval.num_samples`` > 0, ``evaluate`` scores class-balanced samples with the in-repo
feature classifier (moejax/diffusion/metric.py).

Axes: B batch, H/W image size, C channels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from moejax import counting
from moejax.data import images as image_data
from moejax.diffusion import objectives, samplers
from moejax.diffusion.source import DiffusionSource
from moejax.errors import require
from moejax.models.dit import DiT, DiTConfig, trunk_config
from moejax.training.ema import ema_params
from moejax.training.task import BatchField, Task

NPZ_PREFIX = "npz:"
# The sampler that fits each objective.
SAMPLERS_OF = {"ddpm": ("ddpm", "ddim"), "rectified_flow": ("euler",)}


@functools.cache
def load_split(dataset: str, split: str, image_size: int, channels: int) -> image_data.ImageSet:
  """A data set's split at the model's size: pixel images in [0, 1], or npz latents as stored
  (their shape must be the model's)."""
  if not dataset.startswith(NPZ_PREFIX):
    return image_data.load_images(dataset, split, image_size=image_size, channels=channels)
  path = dataset[len(NPZ_PREFIX):]
  with np.load(path) as arrays:
    latents, labels = arrays["latents"].astype(np.float32), arrays["labels"].astype(np.int32)
  require(latents.shape[1:] == (image_size, image_size, channels),
          f"config.data.dataset={dataset!r}: latents {latents.shape[1:]} do not match "
          f"config.model (image_size={image_size}, channels={channels})")
  classes = int(labels.max()) + 1
  return image_data.ImageSet(latents, labels, classes, tuple(str(c) for c in range(classes)))


def is_latent(config: ml_collections.ConfigDict) -> bool:
  return config.data.dataset.startswith(NPZ_PREFIX)


class DiTTask(Task):
  """Class-conditional image generation with a DiT-MoE."""
  name = "dit"

  def check(self, config: ml_collections.ConfigDict) -> None:
    trunk_config(config.model)
    dit = DiTConfig.from_config(config.model)
    data, sample = config.data, config.sample
    require(data.batch_size > 0, f"config.data.batch_size={data.batch_size} must be > 0")
    require(0.0 <= data.class_dropout < 1.0,
            f"config.data.class_dropout={data.class_dropout} must be in [0, 1)")
    ema = config.optim.get("ema_decay")
    require(ema is None or 0.0 <= ema < 1.0, f"config.optim.ema_decay={ema} must be in [0, 1)")
    fits = SAMPLERS_OF[dit.objective]
    require(sample.sampler in fits, f"config.sample.sampler={sample.sampler!r} does not sample "
                                    f"a {dit.objective!r} model; use one of {fits}")
    require(sample.steps >= 1, f"config.sample.steps={sample.steps} must be >= 1")
    require(sample.sampler == "euler" or sample.steps <= dit.num_timesteps,
            f"config.sample.steps={sample.steps} must be <= config.model.diffusion."
            f"num_timesteps={dit.num_timesteps}")
    require(config.eval.num_samples >= 0,
            f"config.eval.num_samples={config.eval.num_samples} must be >= 0")
    require(config.eval.num_samples == 0 or not is_latent(config),
            "config.eval.num_samples > 0 scores pixel images; latents need a decoder first")

  def build_model(self, model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> DiT:
    return DiT.from_config(model, rngs=rngs)

  def loss(self, model: DiT, batch: dict):
    aux = {}

    def predict(z_BHWC, time_B):
      out_BHWC, aux["moe"] = model(z_BHWC, time_B, batch["labels"])
      return out_BHWC

    dit = model.dit
    loss, metrics = objectives.loss(dit.objective, dit.schedule(), predict, batch["images"],
                                    batch["noise"], batch["t"])
    return loss, {**aux["moe"], **metrics}

  def aux_loss_defaults(self, model: ml_collections.ConfigDict) -> dict[str, float]:
    return trunk_config(model).aux_loss_defaults()

  def batch_spec(self, config: ml_collections.ConfigDict) -> dict[str, BatchField]:
    model, b = config.model, config.data.batch_size
    image = (b, model.image_size, model.image_size, model.channels)
    return {"images": BatchField(image, jnp.float32, ("batch", None, None, None)),
            "noise": BatchField(image, jnp.float32, ("batch", None, None, None)),
            "labels": BatchField((b,), jnp.int32, ("batch",)),
            "t": BatchField((b,), jnp.float32, ("batch",))}

  def tokens_per_batch(self, config: ml_collections.ConfigDict) -> int:
    return config.data.batch_size * DiTConfig.from_config(config.model).num_patches

  def load_split(self, config: ml_collections.ConfigDict, split: str) -> image_data.ImageSet:
    model = config.model
    image_set = load_split(config.data.dataset, split, model.image_size, model.channels)
    require(image_set.num_classes <= model.num_classes,
            f"config.model.num_classes={model.num_classes}: {config.data.dataset!r} has "
            f"{image_set.num_classes} classes")
    return image_set

  def make_source(self, config: ml_collections.ConfigDict, split: str):
    """"train": the shuffled stream with label dropout; "eval": the test split in order, no
    dropout (the held-out loss)."""
    dit, data = DiTConfig.from_config(config.model), config.data
    train = split == "train"
    image_set = self.load_split(config, "train" if train else "test")
    return DiffusionSource(image_set, data.batch_size, data.seed, objective=dit.objective,
                           num_timesteps=dit.num_timesteps,
                           class_dropout=data.class_dropout if train else 0.0,
                           null_class=dit.null_class, latents=is_latent(config),
                           latent_scale=data.latent_scale, shuffle=train)

  def evaluate(self, config, graphdef, state, *, eval_loss, items_dir=None) -> dict:
    """With ``config.eval.num_samples`` > 0: the feature-classifier Frechet distance of
    class-balanced samples from the EMA weights, its real-vs-real floor and the samples'
    conditional accuracy (moejax/diffusion/metric.py)."""
    del eval_loss, items_dir
    if not config.eval.num_samples:
      return {}
    from moejax.diffusion import metric  # pylint: disable=import-outside-toplevel
    labels = np.arange(config.eval.num_samples) % config.model.num_classes
    images = generate(config, graphdef, inference_params(state), state.model_state, labels)
    return metric.score_samples(config, images, labels)

  def counts(self, config: ml_collections.ConfigDict) -> dict:
    return counting.dit_summary(config)


def inference_params(state):
  """The EMA weights when the optimizer keeps them, else the trained ones."""
  ema = ema_params(state.opt_state)
  return state.params if ema is None else ema


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _generate_batch(graphdef, method, steps, guidance, null_class, clip, params, rest,
                    noise_BHWC, labels_B, key):
  predict = model_predict(graphdef, params, rest)
  schedule = nnx.merge(graphdef, params, rest, copy=True).dit.schedule()
  return samplers.sample(method, predict, schedule, noise_BHWC, labels_B, key, steps=steps,
                         guidance=guidance, null_class=null_class, clip=clip)


@functools.partial(jax.jit, static_argnums=2)
def _start_noise(noise_key, rows_B, shape):
  """The starting noise of samples ``rows_B``: one draw per sample index."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), shape))(rows_B)


def model_predict(graphdef, params, rest):
  """``predict(z_BHWC, time_B, labels_B) -> out_BHWC`` of the model in eval mode, merged at
  the caller's trace level (usable inside a sampler's ``lax.scan``)."""

  def predict(z_BHWC, time_B, labels_B):
    model = nnx.merge(graphdef, params, rest, copy=True)
    model.eval()
    return model(z_BHWC, time_B, labels_B)[0]

  return predict


def generate(config: ml_collections.ConfigDict, graphdef, params, rest, labels,
             **sample_overrides) -> np.ndarray:
  """Samples [len(labels), H, W, C] in data space, with ``config.sample`` (updated by
  ``sample_overrides``: sampler, steps, guidance, seed), in batches of
  ``config.eval.batch_size``; the starting noise of sample i depends on (seed, i) only."""
  s = {**config.sample.to_dict(), **sample_overrides}
  dit = DiTConfig.from_config(config.model)
  labels = np.asarray(labels, np.int32)
  b = config.eval.batch_size
  shape = (dit.image_size, dit.image_size, dit.channels)
  noise_key, step_key = (jax.random.fold_in(jax.random.key(s["seed"]), i) for i in (0, 1))
  outs = []
  for start in range(0, len(labels), b):
    rows = np.arange(start, min(start + b, len(labels)))
    outs.append(_generate_batch(graphdef, s["sampler"], int(s["steps"]), float(s["guidance"]),
                                dit.null_class, not is_latent(config), params, rest,
                                _start_noise(noise_key, jnp.asarray(rows), shape),
                                jnp.asarray(labels[rows]),
                                jax.random.fold_in(step_key, start)))
  return np.concatenate(jax.device_get(outs)) if outs else np.zeros((0, *shape), np.float32)
