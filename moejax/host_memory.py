"""Host-memory allocator setting for XLA:CPU runs.

XLA:CPU allocates its output and temporary buffers with the C allocator. glibc serves blocks
above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps them on free, and
the per-thread arenas unmap a heap once it is empty, so every step of a program with large
buffers page-faults and zeroes them anew. An MoE layer's weight gradients are E times a dense
layer's: for E=64, d_model=256 (forward+backward of the experts, 2 cores) this cost ~47k page
faults per call, and keeping freed memory brought them to 2-4k and the time from ~200 ms to
~145 ms (the dense FFN of the same active FLOPs: ~125 ms to ~90 ms). Here every block comes from
the main heap (one arena, no mmap), which is never trimmed, so the next step reuses it. The
cost: the process keeps its peak heap size until it exits.

``keep_freed_host_memory()`` is called by the entry points (experiments/, benchmarks/); set
``MOEJAX_KEEP_HOST_MEMORY=0`` to leave the allocator alone. A no-op where the C library is
not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # M_TRIM_THRESHOLD = -1: never trim (a finite int threshold, at most 2 GiB, still
# returned the top of the heap to the OS once several GiB of expert buffers were freed)


def keep_freed_host_memory() -> bool:
  """Asks glibc to serve every block from its heap and never trim it; True if applied."""
  if os.environ.get("MOEJAX_KEEP_HOST_MEMORY", "1") == "0":
    return False
  name = ctypes.util.find_library("c")
  if platform.libc_ver()[0] != "glibc" or not name:
    return False
  mallopt = ctypes.CDLL(name).mallopt
  return all([mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, _NEVER),
              mallopt(_M_ARENA_MAX, 1)])
