"""The ``python -m analysis.fit`` command line."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import coverage_study
from analysis import fit as fit_cli
from analysis.laws import get_law
from analysis.synthetic import synthetic_chinchilla_runs


@pytest.fixture()
def csv_path(tmp_path):
  data = synthetic_chinchilla_runs(seed=0)
  df = pd.DataFrame({"params": data["N"], "tokens": data["D"], "loss": data["loss"]})
  df.loc[len(df)] = [1e8, 1e9, 9.9]  # An outlying run.
  df.loc[len(df)] = [1e8, 2e9, np.nan]  # A failed run.
  path = tmp_path / "runs.csv"
  df.to_csv(path, index=False)
  return path


def _run(capsys, argv):
  assert fit_cli.main(argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  return json.loads(lines[0])


def test_chinchilla_json_line(csv_path, capsys, tmp_path):
  # E pinned (a 900-start grid instead of 4,500 keeps the test fast).
  out = _run(capsys, ["--csv", str(csv_path), "--law", "chinchilla", "--n-col", "params",
                      "--d-col", "tokens", "--loss-col", "loss", "--bootstrap", "50",
                      "--drop-top", "1", "--fix", "e=0.5", "--plot", str(tmp_path / "fit.png")])
  assert out["rows_read"] == 37 and out["rows_used"] == 35  # NaN row and top row dropped.
  assert set(out["params"]) >= {"E", "A", "B", "alpha", "beta"}
  for p in out["params"].values():
    assert set(p) == {"estimate", "se", "ci95"}
    assert p["ci95"][0] <= p["estimate"] <= p["ci95"][1]
  assert out["params"]["E"]["estimate"] == pytest.approx(np.exp(0.5))
  assert out["params"]["E"]["se"] == 0.0
  assert out["objective"] > 0 and out["bootstrap"]["resamples"] == 50
  assert out["stability"]["n_starts"] == len(get_law("chinchilla").grid({"e": 0.5}))
  assert (tmp_path / "fit.png").stat().st_size > 0 and (tmp_path / "fit.pdf").exists()


def test_no_bootstrap(tmp_path, capsys):
  path = tmp_path / "clark.csv"
  n = np.repeat([1e7, 1e8, 1e9], 2)
  pd.DataFrame({"N": n, "E": [4, 16] * 3, "loss": 30 * n ** -0.1}).to_csv(path, index=False)
  out = _run(capsys, ["--csv", str(path), "--law", "clark", "--n-col", "N", "--e-col", "E",
                      "--loss-col", "loss", "--bootstrap", "0"])
  assert out["params"]["a"]["estimate"] == pytest.approx(-0.1, abs=1e-3)
  assert out["params"]["a"]["se"] is None and "bootstrap" not in out


def test_other_law_needs_its_columns(csv_path, capsys):
  with pytest.raises(SystemExit, match="--e-col"):
    fit_cli.main(["--csv", str(csv_path), "--law", "clark", "--n-col", "params",
                  "--loss-col", "loss"])
  with pytest.raises(SystemExit, match="no column"):
    fit_cli.main(["--csv", str(csv_path), "--n-col", "nope", "--d-col", "tokens",
                  "--loss-col", "loss"])


def test_best_of_keeps_lowest_loss_per_cell(tmp_path, capsys):
  df = pd.DataFrame({"N": [1e7, 1e7, 1e8, 1e8, 1e9, 1e9] * 2, "E": [4, 4, 4, 4, 4, 4] * 2,
                     "loss": [4.0, 4.5, 3.5, 3.9, 3.0, 3.2, 3.9, 4.4, 3.4, 3.8, 2.9, 3.1]})
  df["E"] = [4] * 6 + [16] * 6
  path = tmp_path / "moe.csv"
  df.to_csv(path, index=False)
  out = _run(capsys, ["--csv", str(path), "--law", "clark", "--n-col", "N", "--e-col", "E",
                      "--loss-col", "loss", "--best-of", "N,E", "--bootstrap", "20"])
  assert out["rows_used"] == 6
  assert out["params"]["a"]["estimate"] < 0


def test_coverage_study_runs(capsys):
  assert coverage_study.main(["--datasets", "1", "--resamples", "20"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["datasets"] == 1 and set(out["coverage"]) == {"E", "A", "B", "alpha", "beta"}
