"""Coverage of the bootstrap intervals on synthetic data with known coefficients.

  python -m analysis.coverage_study --datasets 100 --resamples 500 --noise 0.01

Draws ``--datasets`` synthetic sweeps from Hoffmann et al.'s Chinchilla law
(``analysis.synthetic``), fits each with the full grid, bootstraps, and reports how often each
true coefficient falls inside its 95% interval and how wide the intervals are (a fitter with
honest uncertainty covers ~95% with intervals narrow enough to use). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import numpy as np

from analysis.bootstrap import bootstrap_fit
from analysis.fitting import fit_law
from analysis.laws import get_law
from analysis.synthetic import CHINCHILLA_TRUTH, synthetic_chinchilla_runs


def coverage_study(num_datasets: int, num_resamples: int, noise: float) -> dict:
  """Per-coefficient coverage and median interval width over synthetic datasets."""
  law = get_law("chinchilla")
  covered = {k: [] for k in CHINCHILLA_TRUTH}
  width = {k: [] for k in CHINCHILLA_TRUTH}
  start = time.perf_counter()
  for seed in range(num_datasets):
    data = synthetic_chinchilla_runs(seed, noise=noise)
    fit = fit_law(law, {"N": data["N"], "D": data["D"]}, data["loss"])
    summary = bootstrap_fit(fit, num_resamples, seed=seed).summary()
    for name, truth in CHINCHILLA_TRUTH.items():
      lo, hi = summary[name]["ci"]
      covered[name].append(lo <= truth <= hi)
      width[name].append(hi - lo)
  return {
      "datasets": num_datasets, "resamples": num_resamples, "noise": noise,
      "coverage": {k: float(np.mean(v)) for k, v in covered.items()},
      "all_covered": float(np.mean(np.all([covered[k] for k in covered], axis=0))),
      "median_width": {k: float(np.median(v)) for k, v in width.items()},
      "seconds": round(time.perf_counter() - start, 1),
  }


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m analysis.coverage_study", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", type=int, default=100)
  p.add_argument("--resamples", type=int, default=500)
  p.add_argument("--noise", type=float, default=0.01, help="relative noise of the losses")
  args = p.parse_args(argv)
  sys.stdout.write(json.dumps(coverage_study(args.datasets, args.resamples, args.noise)) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
