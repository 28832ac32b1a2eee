"""Interface slot for the Pallas grouped matmul (a later issue implements it).

``gmm(x_AI, w_EIO, group_sizes_E) -> y_AO``: rows of ``x_AI`` sorted by group, the first
``group_sizes_E[0]`` rows times ``w_EIO[0]``, the next ``group_sizes_E[1]`` times ``w_EIO[1]``,
and so on; rows past ``sum(group_sizes_E)`` give zeros. It is the signature of
``jax.lax.ragged_dot`` (and of megablox ``gmm``), differentiable in ``x_AI`` and ``w_EIO``, so the
``pallas`` dispatch strategy (moejax/moe/dispatch/grouped.py) uses it exactly where
``ragged_dot`` runs ``jax.lax.ragged_dot``. Axes: A rows, I/O features, E groups (experts).
"""

from __future__ import annotations

AVAILABLE = False


def gmm(x_AI, w_EIO, group_sizes_E):
  """The Pallas grouped matmul (TPU Mosaic, GPU Triton/Mosaic-GPU, interpret mode on CPU)."""
  del x_AI, w_EIO, group_sizes_E
  raise NotImplementedError(
      "kernels_pallas.grouped_matmul.gmm is not implemented yet; use dispatch='sorted' or "
      "'ragged_dot'")
