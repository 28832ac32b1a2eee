"""TPU chips and slices for planning: peak figures per chip, topology names, and compile-only
devices from libtpu (no TPU needed).

Topology names are libtpu's: ``v5p:4x4x4`` is a v5p slice of 4 x 4 x 4 = 64 chips (Cloud's
``v5p-128`` counts TensorCores, two per v5p chip); ``v5e:2x2``, ``v6e:4x4``, ``v4:2x2x2``.

libtpu is found, in order: ``$TPU_LIBRARY_PATH`` (a ``libtpu.so``), an importable ``libtpu``
(``pip install "jax[tpu]"``), ``$MOEJAX_LIBTPU_DIR/libtpu/libtpu.so``, and
``<venv>/tpu-compiler/libtpu/libtpu.so`` (where scripts/setup.sh installs requirements-tpu.txt).
The last two stay off ``sys.path``, so plain CPU use never loads libtpu and prints no TPU
warnings; the planner loads it as a PJRT plugin only when it compiles for a topology.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys

from moejax.errors import ConfigError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip peaks. ``hbm_bytes`` is the capacity the XLA TPU compiler plans against."""
  name: str
  hbm_bytes: int
  peak_bf16_flops: float     # FLOP/s, dense bf16 matmul
  hbm_bytes_per_s: float
  ici_bytes_per_s: float     # all ICI links of one chip together, one direction
  source: str


# Google Cloud TPU documentation, "System architecture" pages (checked 2026-12-03):
# https://cloud.google.com/tpu/docs/v5p, /v5e, /v6e, /v4. HBM capacities of v5p and v5e are as
# libtpu 0.0.42 reports them available in its RESOURCE_EXHAUSTED messages ("95.74G", "15.75G";
# the pages say 95 GB and 16 GB); v6e and v4 are the pages' nominal capacities.
CHIPS = {
    "v5p": Chip("v5p", int(95.74 * GIB), 459e12, 2765e9, 4800e9 / 8,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM at 2765 GB/s, "
                "ICI 4800 Gbps"),
    "v5e": Chip("v5e", int(15.75 * GIB), 197e12, 819e9, 1600e9 / 8,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM at 819 GB/s, "
                "ICI 1600 Gbps"),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1640e9, 3584e9 / 8,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1640 GB/s, "
                "ICI 3584 Gbps"),
    "v4": Chip("v4", 32 * GIB, 275e12, 1200e9, 2400e9 / 8,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM at 1200 GB/s, "
               "ICI 2400 Gbps"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str          # libtpu's name, e.g. "v5p:4x4x4"
  chip: Chip
  shape: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)


def parse_topology(name: str) -> Topology:
  """``v5p:4x4x4`` -> Topology; a ConfigError names the known chips and the expected form."""
  match = re.fullmatch(r"(v\w+):(\d+(?:x\d+)+)", name.strip())
  if not match or match.group(1) not in CHIPS:
    raise ConfigError(f"--topology={name!r}: expected CHIP:AxB[xC] with CHIP one of "
                     f"{sorted(CHIPS)}, e.g. v5p:4x4x4 (64 chips) or v5e:2x2")
  shape = tuple(int(s) for s in match.group(2).split("x"))
  if min(shape) < 1:
    raise ConfigError(f"--topology={name!r}: every dimension must be positive")
  return Topology(name.strip(), CHIPS[match.group(1)], shape)


def libtpu_path() -> str | None:
  """The libtpu.so the planner will load, or None (see the module docstring for the order)."""
  if os.environ.get("TPU_LIBRARY_PATH") and os.path.isfile(os.environ["TPU_LIBRARY_PATH"]):
    return os.environ["TPU_LIBRARY_PATH"]
  spec = importlib.util.find_spec("libtpu")
  if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "libtpu.so")
    if os.path.isfile(path):
      return path
  for root in (os.environ.get("MOEJAX_LIBTPU_DIR"), os.path.join(sys.prefix, "tpu-compiler")):
    if root and os.path.isfile(os.path.join(root, "libtpu", "libtpu.so")):
      return os.path.join(root, "libtpu", "libtpu.so")
  return None


# A single-host accelerator type per chip, as Cloud names them (only quiets libtpu's start-up).
_ACCELERATOR_TYPE = {"v5p": "v5p-8", "v5e": "v5litepod-4", "v6e": "v6e-4", "v4": "v4-8"}

MISSING_LIBTPU = ("the TPU compiler (libtpu) is not installed: run scripts/setup.sh with "
                  "MOEJAX_TPU_COMPILER=1, or `pip install --no-deps --target .venv/tpu-compiler "
                  "-r requirements-tpu.txt` (~200 MB download), or set MOEJAX_LIBTPU_DIR")


def compile_only_devices(topology: Topology) -> list:
  """The slice's devices, for ahead-of-time compilation only; raises ConfigError without
  libtpu or for a shape libtpu does not know."""
  path = libtpu_path()
  if path is None:
    raise ConfigError(MISSING_LIBTPU)
  os.environ["TPU_LIBRARY_PATH"] = path  # read by jax when it loads the TPU plugin
  # No TPU here: tell libtpu what it would otherwise ask the (absent) GCE metadata server for,
  # which silences its warnings; and let several planners run at once (libtpu's lock file).
  for key, value in {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_ID": "0",
                     "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
                     "TPU_ACCELERATOR_TYPE": _ACCELERATOR_TYPE[topology.chip.name]}.items():
    os.environ.setdefault(key, value)
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    devices = topologies.get_topology_desc(topology_name=topology.name, platform="tpu").devices
  except Exception as e:  # pylint: disable=broad-except  (libtpu raises XlaRuntimeError)
    first = (str(e).strip().splitlines() or [repr(e)])[0]
    raise ConfigError(f"--topology={topology.name}: libtpu rejects it ({first})") from None
  if len(devices) != topology.num_chips:
    raise ConfigError(f"--topology={topology.name}: libtpu gives {len(devices)} devices, "
                     f"expected {topology.num_chips} chips")
  return list(devices)
