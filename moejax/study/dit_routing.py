"""Routing analyses of a trained DiT-MoE (Fei et al. 2024, section 4.3): which expert each patch
token picks first, by timestep, class and patch position, per MoE layer.

The paper claims expert choice follows spatial position and timestep, not class; that routing
is concentrated at early (low-noise) steps and uniform later; and that deeper layers are more
balanced. Here each claim is a number: the normalised mutual information (NMI) of the first
choice with timestep bin, class and position, each against a permutation null (routing_stats),
and the normalised entropy of expert usage per timestep bin and per layer (1 = uniform).

  choices(run, images, labels, time_bins)  noisy test images at ``time_bins`` evenly spaced
      times, through the EMA weights with recorded choices -> first choices [M, R, S] with the
      row's time bin and class (R = time_bins x images)
  analyse(...)  -> NMI and nulls per layer and attribute, usage [M, V, E], entropies

Axes: M MoE layers, N images, R rows (time bin x image), S patch tokens, K choices, E experts,
V attribute values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.diffusion.schedules import RF_TIME_SCALE, rectified_flow_noisy
from moejax.models.dit import DiTConfig
from moejax.moe.layer import EXPERT_CHOICES
from moejax.study import routing_stats
from moejax.study.vmoe_analysis import with_moe
from moejax.tasks.dit import inference_params
from moejax.training.state import model_graphdef

ATTRIBUTES = {"timestep": "rows", "class": "rows", "position": "within_rows"}


@functools.partial(jax.jit, static_argnums=0)
def _first_choices(graphdef, params, rest, z_BHWC, time_B, labels_B):
  model = nnx.merge(graphdef, params, rest, copy=True)
  model.eval()
  return model(z_BHWC, time_B, labels_B)[1][EXPERT_CHOICES][..., 0]


def time_grid(dit: DiTConfig, bins: int) -> tuple[np.ndarray, np.ndarray]:
  """(noise-level per bin, what the model reads): bin centres of [0, 1] as DDPM step indices
  (bin 0 = least noise) or rectified-flow times."""
  centres = (np.arange(bins) + 0.5) / bins
  if dit.objective == "ddpm":
    steps = np.floor(centres * dit.num_timesteps).astype(int)
    return steps, steps.astype(np.float32)
  return centres, (RF_TIME_SCALE * centres).astype(np.float32)


def choices(run, images_NHWC, labels_N, time_bins: int = 8, seed: int = 0,
            batch: int = 500) -> dict:
  """First choices of noisy ``images_NHWC`` (data space) at ``time_bins`` noise levels."""
  config = with_moe(run.config, return_choices=True)
  graphdef = model_graphdef(config)
  dit = DiTConfig.from_config(config.model)
  schedule = dit.schedule()
  params, rest = inference_params(run.state), run.state.model_state
  levels, model_times = time_grid(dit, time_bins)
  rng = np.random.default_rng(seed)
  firsts, bins, classes = [], [], []
  with run.context():
    for b, (level, model_time) in enumerate(zip(levels, model_times)):
      for start in range(0, len(images_NHWC), batch):
        x = jnp.asarray(images_NHWC[start:start + batch])
        eps = jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32))
        n = x.shape[0]
        if dit.objective == "ddpm":
          z = schedule.noisy(x, eps, jnp.full((n,), int(level)))
        else:
          z = rectified_flow_noisy(x, eps, jnp.full((n,), float(level), jnp.float32))
        labels = jnp.asarray(labels_N[start:start + batch], jnp.int32)
        first_MT = _first_choices(graphdef, params, rest, z, jnp.full((n,), model_time), labels)
        firsts.append(np.asarray(first_MT).reshape(first_MT.shape[0], n, -1))
        bins.append(np.full(n, b))
        classes.append(np.asarray(labels_N[start:start + batch]))
  return {"first_MRS": np.concatenate(firsts, axis=1), "time_bin_R": np.concatenate(bins),
          "class_R": np.concatenate(classes), "num_experts": config.model.moe.num_experts,
          "time_bins": time_bins}


def analyse(first_MRS, time_bin_R, class_R, num_classes: int, time_bins: int,
            num_experts: int, num_permutations: int = 20, seed: int = 0) -> dict:
  """Per layer and attribute: NMI, null mean and 95th percentile, usage [V, E]; plus the
  normalised entropy of usage per time bin [M, bins] and of each layer's overall usage [M]."""
  rng = np.random.default_rng(seed)
  _, rows, tokens = first_MRS.shape
  attrs = {"timestep": (np.broadcast_to(time_bin_R[:, None], (rows, tokens)), time_bins),
           "class": (np.broadcast_to(class_R[:, None], (rows, tokens)), num_classes),
           "position": (np.broadcast_to(np.arange(tokens)[None], (rows, tokens)), tokens)}
  out = {name: {"nmi": [], "null_mean": [], "null_p95": [], "usage": []} for name in attrs}
  overall = []
  for first_RS in first_MRS:
    for name, (attr_RS, values) in attrs.items():
      stats = routing_stats.nmi_against_null(first_RS, attr_RS, ATTRIBUTES[name],
                                             num_permutations, rng)
      for key, value in zip(("nmi", "null_mean", "null_p95"), stats):
        out[name][key].append(value)
      out[name]["usage"].append(routing_stats.usage_by_value(first_RS, attr_RS, values,
                                                             num_experts))
    overall.append(routing_stats.usage_by_value(first_RS, np.zeros_like(first_RS), 1,
                                                num_experts)[0])
  for name in attrs:
    out[name]["usage"] = np.stack(out[name]["usage"])
  return {**out,
          "entropy_by_timestep": np.stack([routing_stats.normalized_entropy(u)
                                           for u in out["timestep"]["usage"]]),
          "entropy_by_layer": routing_stats.normalized_entropy(np.stack(overall))}
