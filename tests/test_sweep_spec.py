"""Sweep definitions (no training): the paper grid, the tiny and iso-FLOP grids, the results
table, divergence detection and overrides."""

import sqlite3

import numpy as np
import pandas as pd
import pytest

from analysis import results_schema
from configs.sweeps import optimal_sparsity
from moejax.sweeps import results, spec
from moejax.sweeps.execute import finite_divergence_step
from moejax.validation import ConfigError
from tests.conftest import run_module

SWEEP = "configs/sweeps/optimal_sparsity.py"
KNOWN_PAPER_NAMES = ("d512-E8-k2-320M-A170M", "d1024-E64-k8-6.7B-A1.1B",
                     "d2048-E128-k16-52.2B-A7.1B")


def _frame(runs):
  return pd.DataFrame([{"name": r.name, **spec.static_columns(r)} for r in runs])


def test_paper_list_prints_65_runs_with_the_released_names():
  lines = run_module("experiments.sweep", f"--sweep={SWEEP}:paper", "--list").stdout.splitlines()
  assert len(lines) == 65
  names = [line.split()[0] for line in lines]
  assert len(set(names)) == 65
  for name in KNOWN_PAPER_NAMES:
    assert name in names
  assert all(f in lines[0] for f in ("total=", "active=", "train_flops=", "tokens="))
  assert "tokens=125,002,842,112" in lines[0]  # 29,803 steps x 1024 x 4096


def test_paper_grid():
  df = _frame(optimal_sparsity.get_sweep("paper"))
  assert len(df) == 65
  assert (df.top_k <= df.num_experts).all()
  assert not ((df.d_model == 2048) & (df.num_experts == 256)).any()
  assert sorted(df.d_model.unique()) == [512, 1024, 2048]
  assert (df.train_tokens == 125_002_842_112).all()
  # Within a (d_model, k) family the active parameters are fixed while the total grows with E.
  for _, family in df.groupby("family"):
    assert family.active_params.nunique() == 1
    assert family.sort_values("num_experts").total_params.is_monotonic_increasing


def test_tiny_grid_has_fixed_active_families_and_dense_baselines():
  df = _frame(optimal_sparsity.get_sweep("tiny"))
  moe = df[df.num_experts > 1]
  assert moe.top_k.nunique() >= 2 and moe.active_params.nunique() >= 2
  df["seed"] = df.name.str.extract(r"-s(\d+)$", expand=False)
  assert df.seed.nunique() >= 2  # the trend must not hang on one seed
  for _, family in df.groupby(["family", "seed"]):
    assert family.active_params.nunique() == 1  # dense baseline included
    assert (family.num_experts == 1).sum() == 1  # one dense baseline per family and seed
    moe = family[family.num_experts > 1].sort_values("num_experts")
    assert len(moe) >= 3 and moe.total_params.is_monotonic_increasing
    assert moe.total_params.is_unique
  assert {c for c in results_schema.REQUIRED_COLUMNS
          if c not in ("final_train_loss", "final_eval_loss", "status")} <= set(df.columns)
  assert all(r.config.data.source == "suites" for r in optimal_sparsity.get_sweep("tiny"))


def test_isoflop_runs_spend_equal_flops_at_varied_sparsity():
  df = _frame(optimal_sparsity.get_sweep("isoflop_tiny"))
  assert df.family.nunique() >= 2
  for _, budget in df.groupby("family"):
    assert budget.train_flops.max() / budget.train_flops.min() < 1.01
    assert budget.sparsity.nunique() >= 3 and budget.total_params.nunique() >= 3
  # The analysis groups budgets the same way.
  from analysis import isoflop  # pylint: disable=import-outside-toplevel
  assert len(np.unique(isoflop.budget_groups(df.train_flops.to_numpy()))) == df.family.nunique()
  # ... as iso-FLOP budgets, and never as families of fixed active parameters (findings 1-3).
  from moejax.study import verdict_common  # pylint: disable=import-outside-toplevel
  assert len(isoflop.isoflop_budgets(df)) == df.family.nunique()
  assert verdict_common.families(df) == {}


def test_small_preset_holds_every_finding_and_follows_tiny():
  runs = optimal_sparsity.get_sweep("small")
  spec.validate(runs)
  df = _frame(runs)
  tiny = _frame(optimal_sparsity.get_sweep("tiny"))
  assert df["seed"].nunique() >= 2
  from analysis import isoflop  # pylint: disable=import-outside-toplevel
  from moejax.study import (  # pylint: disable=import-outside-toplevel
      verdict_common, verdicts_hparams)
  one_seed = df[df["seed"] == df["seed"].min()]
  assert len(isoflop.isoflop_budgets(one_seed)) >= 3  # trends are fittable
  assert set(verdict_common.families(one_seed)) == set(tiny["family"])  # budgets are not families
  for knob in ("lr", "init_scale"):
    rows = verdicts_hparams.knob_rows(one_seed, knob)
    assert len(rows) == 2 and all(r[knob].nunique() == 3 for r in rows)
  # TINY's data and training settings carry over.
  for r in runs:
    assert r.config.data.preset == optimal_sparsity.TINY["data"]["preset"]
    assert r.config.data.batch_size == optimal_sparsity.TINY["data"]["batch_size"]
  changed = {**optimal_sparsity.TINY, "train": {**optimal_sparsity.TINY["train"], "steps": 400},
             "seeds": (3, 4, 5)}
  again = optimal_sparsity.small(changed)
  assert {r.config.seed for r in again} == {3, 4, 5}
  assert max(r.config.train.steps for r in again if r.family.startswith("d")) == 400


def test_overrides_and_validation():
  runs = optimal_sparsity.get_sweep("smoke")
  short = spec.apply_overrides(runs, ["train.steps=6", "optim.lr=0.5", "data.source=synthetic"])
  assert [r.config.train.steps for r in short] == [6] * len(runs)
  assert short[0].config.optim.lr == 0.5 and runs[0].config.train.steps != 6
  for bad in ("train.stepz=5", "trian.steps=5", "train.steps", "train.steps=many"):
    with pytest.raises(ConfigError, match="override"):
      spec.apply_overrides(runs, [bad])
  wide = spec.apply_overrides(runs, ["model.d_model=64"])
  assert wide[2].name.startswith("d64-E4-k1-") and wide[2].config.model.num_heads == 4
  with pytest.raises(ConfigError, match="two runs named"):
    spec.validate([runs[0], runs[0]])
  with pytest.raises(ConfigError, match="top_k"):
    spec.validate([spec.make_run(runs[1].config, model=dict(moe=dict(num_experts=2, top_k=4)))])
  assert [r.name for r in spec.select(runs, "E4")] == [runs[2].name]


def test_results_table_upserts_adds_columns_and_reads_flat(tmp_path):
  with results.ResultsTable(str(tmp_path)) as table:
    table.upsert("a", {"status": "pending", "train_flops": 5_391 * 10**18, "tags": {"x": 1}})
    table.upsert("a", {"status": "running", "new_metric": 0.5}, keep_status=True)
    table.upsert("b", {"status": "done", "final_train_loss": float("nan"), "train_flops": 1})
    table.upsert("a", {"status": "done", "mem_accuracy": 0.25})
    assert table.statuses() == {"a": "done", "b": "done"}
    assert table.get("a")["new_metric"] == 0.5
  with sqlite3.connect(results.table_path(str(tmp_path))) as conn:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  df = results.read_table(str(tmp_path))
  assert list(df.name) == ["a", "b"] and list(df.columns[:2]) == ["name", "status"]
  assert df.train_flops[0] == pytest.approx(5.391e21) and np.isnan(df.final_train_loss[1])
  assert df.mem_accuracy[0] == 0.25 and df.tags[0] == '{"x": 1}'
  assert len(results_schema.load_results(results.table_path(str(tmp_path)))) == 2


def test_finite_divergence_step():
  assert finite_divergence_step({10: 4.0, 20: 3.0, 30: 2.0}) is None
  assert finite_divergence_step({10: 4.0, 20: 3.0, 30: 5.0, 40: 6.0}) == 30
  assert finite_divergence_step({10: 4.0, 20: 5.0, 30: 3.0, 40: 4.5}) == 40
  assert finite_divergence_step({10: 4.0}) is None
