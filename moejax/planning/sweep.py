"""Plan a whole sweep: for each run, the smallest slice (and a mesh from a short candidate list)
whose compiled train step fits, as a table and a CSV.

Per run, slices are tried from small to large. A slice is skipped without compiling when the
train state alone (float32 parameters and two Adam moments, perfectly sharded) exceeds its HBM.
A slice is also skipped when the bfloat16 logits of the chip's tokens alone exceed HBM.
On each slice the candidate meshes are tried in order (``candidate_meshes``); the first that
compiles and fits wins. After two slices that do not fit, the per-chip totals are extrapolated as
``a + b / chips``; when even infinitely many chips would leave ``a`` above HBM (buffers that do
not shrink with the slice, e.g. an unsharded MoE dispatch) the run is reported as not fitting
on any slice of the list, and the larger slices are not compiled.

The CSV is written after every model, and a sweep that finds its CSV resumes: a model already
planned there as fitting, on the same chip kind with the same microbatches and within
``max_chips``, is not compiled again (rows that did not fit are planned anew).
"""

from __future__ import annotations

import csv
import math
import os

import ml_collections
from tqdm import tqdm

from moejax import sharding
from moejax.errors import ConfigError
from moejax.planning import plan
from moejax.planning.chips import GIB, parse_topology
from moejax.sweeps import spec as sweep_spec
from moejax.training import task as task_lib

# Slices tried per chip kind, smallest first (libtpu topology shapes).
SLICES = {
    "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16"),
    "v4": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16"),
    "v5e": ("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v6e": ("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
}
STATE_BYTES_PER_PARAM = 12  # float32 parameter + Adam's two float32 moments
COLUMNS = ("name", "topology", "chips", "mesh", "microbatches", "fits", "argument_gib",
           "temp_gib", "total_gib", "hbm_gib", "step_s", "mfu", "compile_s", "note")


def mesh_axes_in_rules(config: ml_collections.ConfigDict) -> set[str]:
  """Mesh axes that the config's sharding rules map some logical axis to."""
  axes = set()
  for _, target in config.sharding_rules:
    axes.update(sharding.rule_axes(target))
  return axes


def candidate_meshes(config: ml_collections.ConfigDict, chips: int) -> list[dict[str, int]]:
  """FSDP over the slice first; then, when the rules shard experts over a mesh axis ``expert``,
  expert parallelism of degree min(E, chips) and 8 (FSDP over the rest); then, when the rules
  use ``tensor``, tensor parallelism of 4. Only axes the rules use are tried."""
  used = mesh_axes_in_rules(config)
  out = [{"fsdp": chips}]
  experts = int(config.model.moe.num_experts) if config.model.get("moe_every", 1) else 1
  if "expert" in used and experts > 1:
    for degree in sorted({math.gcd(experts, chips), math.gcd(8, experts, chips)}, reverse=True):
      if degree > 1:
        out.append({"fsdp": chips // degree, "expert": degree})
  if "tensor" in used and chips >= 8:
    out.append({"fsdp": chips // 4, "tensor": 4})
  return out


def _row(p: dict, note: str = "") -> dict:
  gib = lambda key: round(p[key] / GIB, 2) if key in p else None
  return {"name": p.get("name"), "topology": p.get("topology"), "chips": p.get("chips"),
          "mesh": ",".join(f"{k}={v}" for k, v in p.get("mesh", {}).items() if v > 1),
          "microbatches": p.get("microbatches"), "fits": p.get("fits"),
          "argument_gib": gib("argument_bytes"), "temp_gib": gib("temp_bytes"),
          "total_gib": gib("total_bytes"), "hbm_gib": gib("hbm_bytes"),
          "step_s": round(p["step_s"], 3) if "step_s" in p else None,
          "mfu": round(p["mfu"], 3) if "mfu" in p else None,
          "compile_s": round(p.get("compile_s", 0.0), 1), "note": note or p.get("error", "")}


def _lower_bound(config: ml_collections.ConfigDict, total_params: int, chips: int,
                 microbatches: int) -> float:
  """Bytes a chip needs at least: its share of the train state (perfectly sharded), or, for a
  model with a vocabulary, the bfloat16 logits of its share of the batch's tokens (the loss
  materialises them; XLA's own rematerialisation spends long compiles on such overflows)."""
  state = total_params * STATE_BYTES_PER_PARAM / chips
  vocab = config.model.get("vocab_size")
  tokens = task_lib.get(config).tokens_per_batch(config) / chips
  return max(state, tokens * vocab * 2 / microbatches if vocab else 0.0)


def _never_fits(tried: list[tuple[int, int]], hbm: int) -> bool:
  """Whether the last two (chips, total bytes) points extrapolate above HBM at any size."""
  if len(tried) < 2:
    return False
  (n1, t1), (n2, t2) = tried[-2:]
  b = (t1 - t2) / (1 / n1 - 1 / n2)
  return t2 - b / n2 > hbm


def plan_model(config: ml_collections.ConfigDict, chip: str, max_chips: int,
               microbatches: int | None = None) -> dict:
  """The smallest fitting (slice, mesh) of one run config, or the last attempt with a note."""
  counts = task_lib.get(config).counts(config)
  name, total_params = counts.get("name"), counts["total_params"]
  tried, last = [], {"name": name, "fits": False}
  for shape in SLICES[chip]:
    topology = parse_topology(f"{chip}:{shape}")
    if topology.num_chips > max_chips:
      break
    bound = _lower_bound(config, total_params, topology.num_chips,
                         microbatches or plan.microbatches_of(config))
    if bound > topology.chip.hbm_bytes:
      continue  # the train state or the chip's logits alone do not fit: skip the compile
    best = None
    for mesh in candidate_meshes(config, topology.num_chips):
      try:
        p = plan.plan_run(config, topology, mesh=mesh, microbatches=microbatches)
      except ConfigError as e:  # e.g. the global batch does not split over the mesh
        last = {**last, "topology": topology.name, "chips": topology.num_chips,
                "error": f"skipped: {e}"}
        continue
      if p["fits"]:
        return _row(p)
      last = p
      need = p.get("total_bytes", p.get("temp_bytes"))
      if need is not None and (best is None or need < best):
        best = need
    if best is not None:
      tried.append((topology.num_chips, best))
      if _never_fits(tried, topology.chip.hbm_bytes):
        return _row(last, note="does not fit at any slice size (per-chip total a + b/chips "
                               "extrapolated from the last two slices stays above HBM)")
  return _row(last, note=f"does not fit up to {max_chips} chips")


def plan_sweep(sweep: str, chip: str = "v5p", models: str | None = None,
               max_chips: int = 1024, microbatches: int | None = None,
               csv_path: str | None = None) -> list[dict]:
  """One row per run of ``sweep`` (``file.py:preset``), written to ``csv_path`` as it goes."""
  if chip not in SLICES:
    raise ConfigError(f"--chip={chip!r}: one of {sorted(SLICES)}")
  runs = sweep_spec.select(sweep_spec.load_sweep(sweep), models)
  if not runs:
    raise ConfigError(f"--models={models!r} matches no run of {sweep}")
  done = read_csv(csv_path) if csv_path and os.path.exists(csv_path) else {}
  rows = []
  for run in tqdm(runs, desc="plan", unit="model"):
    name = task_lib.get(run.config).counts(run.config).get("name")
    previous = done.get(name)
    if previous and _reusable(previous, chip, max_chips,
                              microbatches or plan.microbatches_of(run.config)):
      rows.append(previous)
    else:
      rows.append(plan_model(run.config, chip, max_chips, microbatches))
    if csv_path:  # this run's rows, then the CSV's rows of other models
      planned = {row["name"] for row in rows}
      _write_csv(csv_path, rows + [r for n, r in done.items() if n not in planned])
  return rows


def _reusable(row: dict, chip: str, max_chips: int, microbatches: int) -> bool:
  return (row["fits"] is True and str(row["topology"]).startswith(f"{chip}:")
          and row["chips"] <= max_chips and row["microbatches"] == microbatches)


_TYPES = {"chips": int, "microbatches": int, "fits": lambda v: v == "True",
          **{k: float for k in ("argument_gib", "temp_gib", "total_gib", "hbm_gib", "step_s",
                                "mfu", "compile_s")}}


def read_csv(path: str) -> dict[str, dict]:
  """{model name: row} of a sweep's CSV, typed as ``plan_model`` returns rows."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if rows and set(rows[0]) != set(COLUMNS):
    raise ConfigError(f"--csv={path}: not a plan table (columns {sorted(rows[0])})")
  typed = lambda k, v: None if v == "" and k in _TYPES else _TYPES.get(k, str)(v)
  return {row["name"]: {k: typed(k, v) for k, v in row.items()} for row in rows}


def _write_csv(path: str, rows: list[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def format_table(rows: list[dict]) -> str:
  """A fixed-width table of the rows (the CSV's main columns)."""
  head = ("model", "slice", "chips", "mesh", "fits", "args GiB", "temp GiB", "total GiB",
          "step s", "MFU", "compile s")
  body = [(r["name"], r["topology"] or "-", r["chips"] or "-", r["mesh"] or "-",
           "yes" if r["fits"] else "no", r["argument_gib"], r["temp_gib"], r["total_gib"],
           r["step_s"], r["mfu"], r["compile_s"]) for r in rows]
  body = [tuple("-" if v is None else str(v) for v in row) for row in body]
  widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
  fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))
  lines = [fmt(head)] + [fmt(row) for row in body]
  notes = [f"{r['name']}: {r['note']}" for r in rows if r["note"]]
  return "\n".join(lines + notes)
