"""Command line: fit a scaling law to a results table and print one JSON line.

  python -m analysis.fit --csv FILE --law chinchilla --n-col N --d-col D --loss-col loss
      [--bootstrap 1000] [--drop-top K] [--best-of COL,COL] [--plot out.png]

Laws and the columns they read: chinchilla (N, D), clark (N, E), krajewski (N, D, G),
ludziejewski (N, D, E), sparsity (N, D, S); pass each with --n-col, --d-col, --e-col,
--g-col, --s-col. The JSON line holds, per reported parameter, the estimate, the bootstrap
standard error and 95% percentile interval, plus the objective, residual statistics, the
agreement of the grid's starts, and timings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis import tables
from analysis.bootstrap import bootstrap_fit
from analysis.fitting import fit_law
from analysis.huber import DEFAULT_DELTA
from analysis.laws import LAW_NAMES, get_law
from analysis.results_schema import load_results

_INPUT_FLAGS = {"N": "n_col", "D": "d_col", "E": "e_col", "G": "g_col", "S": "s_col"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m analysis.fit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--csv", required=True, help="results table (csv, parquet or sqlite)")
  p.add_argument("--law", default="chinchilla", choices=LAW_NAMES)
  p.add_argument("--loss-col", required=True)
  p.add_argument("--n-col", help="parameter count column (N)")
  p.add_argument("--d-col", help="training tokens column (D)")
  p.add_argument("--e-col", help="number of experts column (E)")
  p.add_argument("--g-col", help="granularity column (G)")
  p.add_argument("--s-col", help="sparsity column (S)")
  p.add_argument("--bootstrap", type=int, default=1000, help="resamples (0: none)")
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  p.add_argument("--cluster-col", help="resample whole groups of this column (cluster "
                                       "bootstrap, e.g. the model size)")
  p.add_argument("--drop-top", type=int, default=0, help="drop the K highest-loss rows")
  p.add_argument("--best-of", default="",
                 help="comma-separated cell columns: keep the lowest-loss row per cell "
                      "(e.g. the best learning rate per N,D)")
  p.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="Huber delta")
  p.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                 help="pin an optimised parameter (repeatable), e.g. --fix c=0")
  p.add_argument("--e-start", type=float, default=1.0, help="E_start of the E transform")
  p.add_argument("--e-max", type=float, default=math.inf, help="E_max of the E transform")
  p.add_argument("--plot", help="write a diagnostic figure (png; a pdf beside it)")
  return p.parse_args(argv)


def _fixed(pairs: Sequence[str]) -> dict[str, float]:
  out = {}
  for pair in pairs:
    name, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--fix expects NAME=VALUE, got {pair!r}")
    out[name.strip()] = float(value)
  return out


def _json_number(x):
  """JSON has no NaN/inf: write them as null."""
  if isinstance(x, dict):
    return {k: _json_number(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_number(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def run(args: argparse.Namespace) -> dict:
  """Loads, selects rows, fits, bootstraps; returns the JSON-ready report."""
  law = get_law(args.law, e_start=args.e_start, e_max=args.e_max)
  columns = {}
  for name in law.input_names:
    col = getattr(args, _INPUT_FLAGS[name])
    if not col:
      raise SystemExit(f"law {args.law!r} needs --{_INPUT_FLAGS[name].replace('_', '-')}")
    columns[name] = col
  df = load_results(args.csv)
  needed = list(columns.values()) + [args.loss_col] + (
      [args.cluster_col] if args.cluster_col else [])
  missing = [c for c in needed if c not in df.columns]
  if missing:
    raise SystemExit(f"{args.csv}: no column(s) {missing}")
  n_read = len(df)
  df = df.dropna(subset=needed)
  if args.best_of:
    df = tables.best_per_cell(df, [c.strip() for c in args.best_of.split(",")], args.loss_col)
  df = tables.drop_highest_loss(df, args.loss_col, args.drop_top)
  inputs = {n: df[c].to_numpy(np.float64) for n, c in columns.items()}
  loss = df[args.loss_col].to_numpy(np.float64)

  t0 = time.perf_counter()
  fit = fit_law(law, inputs, loss, delta=args.delta, fixed=_fixed(args.fix))
  fit_seconds = time.perf_counter() - t0
  report = {"law": law.name, "formula": law.formula, "citation": law.citation,
            "columns": columns, "loss_col": args.loss_col, "rows_read": n_read,
            "rows_used": len(df), "dropped_top": args.drop_top, **fit.summary()}
  if args.bootstrap > 0:
    groups = df[args.cluster_col].to_numpy() if args.cluster_col else None
    boot = bootstrap_fit(fit, args.bootstrap, seed=args.seed, groups=groups)
    params = {k: {"estimate": v["estimate"], "se": v["se"], "ci95": v["ci"]}
              for k, v in boot.summary(0.95).items()}
    report["bootstrap"] = {"resamples": args.bootstrap, "seed": args.seed,
                           "cluster_col": args.cluster_col,
                           "n_unconverged": boot.n_unconverged,
                           "seconds": round(boot.seconds, 3)}
  else:
    params = {k: {"estimate": v, "se": None, "ci95": [None, None]}
              for k, v in fit.params().items()}
  report["params"] = params
  report["stability"] = fit.stability()
  report["fit_seconds"] = round(fit_seconds, 3)
  if args.plot:
    from analysis.figures import save_figure  # Imported here: matplotlib only when plotting.
    from analysis.fit_plots import plot_fit_diagnostics
    paths = save_figure(plot_fit_diagnostics(fit, inputs, loss), Path(args.plot).with_suffix(""))
    report["plot"] = paths
  return report


def main(argv: Sequence[str] | None = None) -> int:
  report = run(parse_args(argv))
  sys.stdout.write(json.dumps(_json_number(report)) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
