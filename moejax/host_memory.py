"""Host-memory allocator setting for XLA:CPU runs.

XLA:CPU allocates its output and temporary buffers with the C allocator. glibc serves blocks
above 32 MiB (its largest mmap threshold) with a fresh ``mmap`` and returns them on free, so
every step of a program with large buffers page-faults and zeroes them anew: an MoE layer's
weight gradients are E times a dense layer's (E=64, d_model=256: 100 MB, ~50k page faults
per forward+backward, about a third of its wall time on a 2-core machine). Keeping freed
memory in the process (no mmap for large blocks, no trimming of the heap) lets the next step
reuse it. The cost: the process keeps its peak heap size until it exits.

``keep_freed_host_memory()`` is called by the entry points (experiments/, benchmarks/); set
``MOEJAX_KEEP_HOST_MEMORY=0`` to leave the allocator alone. A no-op where the C library is
not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_KEEP = 2 ** 31 - 1  # the largest trim threshold mallopt takes (an int)


def keep_freed_host_memory() -> bool:
  """Asks glibc to serve every block from its heap and never trim it; True if applied."""
  if os.environ.get("MOEJAX_KEEP_HOST_MEMORY", "1") == "0":
    return False
  name = ctypes.util.find_library("c")
  if not name:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc only)
  except (OSError, AttributeError):
    return False
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
