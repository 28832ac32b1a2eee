"""Scaling laws behind one interface (``ScalingLaw``), looked up by name.

| name         | inputs   | form                                                         |
|--------------|----------|--------------------------------------------------------------|
| chinchilla   | N, D     | E + A / N^alpha + B / D^beta (Hoffmann et al. 2022)           |
| clark        | N, E     | log L = a log N + b log E + c log N log E + d (Clark 2022)    |
| krajewski    | N, D, G  | c + (g / G^gamma + a) / N^alpha + b / D^beta (Krajewski 2024) |
| ludziejewski | N, D, E  | joint law with ln E interactions (Ludziejewski et al. 2025)   |
| sparsity     | N, D, S  | E + A (1-S)^lambda / N^alpha + B / D^beta (after Abnar 2025)  |
"""

from __future__ import annotations

from analysis.laws import chinchilla, clark, krajewski, ludziejewski, sparsity
from analysis.laws.base import ScalingLaw

LAW_NAMES = ("chinchilla", "clark", "krajewski", "ludziejewski", "sparsity")


def get_law(name: str, *, e_start: float = 1.0, e_max: float = float("inf")) -> ScalingLaw:
  """Returns the law called ``name``; e_start / e_max set the expert-count transform."""
  if name == "chinchilla":
    return chinchilla.LAW
  if name == "clark":
    return clark.make_law(e_start, e_max)
  if name == "krajewski":
    return krajewski.LAW
  if name == "ludziejewski":
    return ludziejewski.make_law(e_start, e_max)
  if name == "sparsity":
    return sparsity.LAW
  raise KeyError(f"unknown law {name!r}; choose one of {LAW_NAMES}")


__all__ = ["LAW_NAMES", "ScalingLaw", "get_law"]
