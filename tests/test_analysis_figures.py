"""Results schema, the synthetic demo table, and the study's figures."""

import sqlite3

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from analysis import demo_data, figures, results_schema


@pytest.fixture(scope="module")
def demo():
  return demo_data.make_demo_results(seed=0)


def test_demo_table_is_synthetic_deterministic_and_complete(demo):
  assert demo.attrs["synthetic"] and demo["name"].str.startswith("synthetic-").all()
  pd.testing.assert_frame_equal(demo, demo_data.make_demo_results(seed=0))
  missing = results_schema.missing_columns(
      demo, results_schema.REQUIRED_COLUMNS + results_schema.SUITE_COLUMNS)
  assert missing == []
  done = demo[demo["status"] == "done"]
  np.testing.assert_allclose(done["sparsity"], 1 - done["top_k"] / done["num_experts"])
  np.testing.assert_allclose(done["tpp"], done["train_tokens"] / done["total_params"])
  np.testing.assert_allclose(done["train_flops"], 6 * done["active_params"] * done["train_tokens"])
  assert len(results_schema.finished_runs(demo)) == len(demo) - 1  # The failed run is dropped.


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".sqlite"])
def test_load_results_formats(demo, tmp_path, suffix):
  path = tmp_path / f"results{suffix}"
  table = demo.drop(columns=["sparsity", "tpp"])
  if suffix == ".csv":
    table.to_csv(path, index=False)
  elif suffix == ".parquet":
    pytest.importorskip("pyarrow")
    table.to_parquet(path)
  else:
    with sqlite3.connect(path) as conn:
      table.to_sql(results_schema.SQLITE_TABLE, conn, index=False)
  loaded = results_schema.add_derived_columns(results_schema.load_results(path))
  np.testing.assert_allclose(loaded["sparsity"], demo["sparsity"])
  np.testing.assert_allclose(loaded["tpp"], demo["tpp"])
  with pytest.raises(ValueError):
    results_schema.load_results(tmp_path / "results.json")


def test_every_study_figure_is_drawn(demo, tmp_path):
  made = figures.make_study_figures(demo, tmp_path)
  assert set(made) == set(figures.STUDY_FIGURES)
  for name, paths in made.items():
    assert "skipped" not in paths, (name, paths)
    for ext in ("png", "pdf"):
      assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000


def test_missing_columns_skip_with_a_message(demo, tmp_path):
  table = demo.drop(columns=["mem_train_accuracy", "reason_train_accuracy"])
  made = figures.make_study_figures(table, tmp_path)
  assert "mem_train_accuracy" in made["accuracy_vs_tpp"]["skipped"]
  assert "reason_train_accuracy" in made["generalization_gaps"]["skipped"]
  assert "png" in made["loss_vs_total_params"]
  with pytest.raises(results_schema.MissingColumnsError, match="mem_train_accuracy"):
    figures.plot_accuracy_vs_tpp(table)


def test_table_without_finished_runs_skips(demo, tmp_path):
  table = demo.assign(status="running")
  made = figures.make_study_figures(table, tmp_path)
  assert all("skipped" in v for v in made.values())


def test_memorization_panel_plots_the_verdicts_metric(demo):
  fig = figures.plot_suite_vs_total_params(demo)
  ax = fig.axes[2]  # bottom-left: memorization accuracy
  drawn = np.concatenate([line.get_ydata() for line in ax.lines])
  done = results_schema.finished_runs(demo)
  assert np.isin(drawn, done["mem_train_accuracy"]).all()
  assert not np.isin(drawn, done["mem_accuracy"]).any()
  assert ax.get_ylabel() == "memorization accuracy (trained facts)"


def test_isoflop_fits_need_iso_flop_budgets_and_three_points(demo):
  # Fixed-active families (one FLOP budget each, active size constant): no iso-FLOP budget.
  families = demo[demo["train_flops"] == demo["train_flops"].min()].copy()
  families["train_flops"] = 6 * families["active_params"] * 1e6
  with pytest.raises(ValueError, match="no budget of equal FLOPs"):
    figures.plot_isoflop(families)
  budgets = sorted(demo["train_flops"].dropna().unique())
  two = figures.plot_isoflop(demo[demo["train_flops"].isin(budgets[:2])], num_resamples=50)
  assert not [l for l in two.axes[1].lines if l.get_linestyle() == "--"]  # no 2-point slope
  three = figures.plot_isoflop(demo[demo["train_flops"].isin(budgets[:3])], num_resamples=50)
  assert [l for l in three.axes[1].lines if l.get_linestyle() == "--"]


def test_log_axes_label_the_data_values(demo):
  fig = figures.plot_loss_vs_total_params(demo)
  ax = fig.axes[0]
  ticks = ax.get_xticks()
  labels = [t.get_text() for t in ax.get_xticklabels()]
  assert 2 <= len(ticks) <= figures.MAX_TICKS + 1 and all(labels)
  gaps = np.diff(np.log10(ticks))
  assert gaps.min() >= np.log10(ticks[-1] / ticks[0]) / figures.MAX_TICKS - 1e-9
  panel = results_schema.finished_runs(demo)
  assert np.isin(ticks, panel["total_params"]).all()
  assert figures._compact(1.25e6) == "1.25M"  # pylint: disable=protected-access
