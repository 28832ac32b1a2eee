"""The DiT-MoE study: the sweep matches FLOPs, the routing statistics find planted structure
and not absent structure, the paper configs lower abstractly, the smoke study runs end to end,
and training resumes exactly after SIGKILL (EMA included)."""

import json

import jax
import numpy as np
import pandas as pd
import pytest

from configs import dit_moe
from configs.sweeps import dit_moe as sweep
from moejax import counting
from moejax.study import dit as dit_study, dit_routing
from tests.conftest import train_straight_and_killed


def test_sweep_dense_baselines_match_active_ffn_flops_and_names_are_unique():
  runs = sweep.get_sweep("tiny")
  assert len({r.name for r in runs}) == len(runs) == 12
  counts = {r.name: counting.dit_summary(r.config) for r in runs}
  for family in ("shared", "no_shared"):
    active = {counts[r.name]["active_params"] for r in runs if r.family == family}
    assert len(active) == 1, (family, active)  # dense and MoE: the same active parameters
  moe = next(r for r in runs if r.config.model.num_experts == 8 and r.family == "shared")
  assert sweep.matched_dense_d_ff(moe.config.model) == 10 * moe.config.model.d_model


def test_routing_statistics_find_planted_structure_only():
  """Layer 0 routes by position, layer 1 by timestep bin, neither by class."""
  rng = np.random.default_rng(0)
  rows, tokens, experts, bins = 400, 16, 4, 4
  time_bin_R = rng.integers(0, bins, rows)
  class_R = rng.integers(0, 10, rows)
  first_MRS = np.stack([np.broadcast_to(np.arange(tokens) % experts, (rows, tokens)),
                        np.broadcast_to(time_bin_R[:, None] % experts, (rows, tokens))])
  noise = rng.uniform(size=first_MRS.shape) < 0.2
  first_MRS = np.where(noise, rng.integers(0, experts, first_MRS.shape), first_MRS)
  out = dit_routing.analyse(first_MRS, time_bin_R, class_R, 10, bins, experts,
                            num_permutations=10)
  assert out["position"]["nmi"][0] > 0.3 > out["position"]["null_p95"][0]
  assert out["timestep"]["nmi"][1] > 0.3 > out["timestep"]["null_p95"][1]
  assert out["class"]["nmi"][0] <= out["class"]["null_p95"][0] + 1e-3
  assert out["position"]["usage"].shape == (2, tokens, experts)
  np.testing.assert_allclose(out["entropy_by_layer"], 1.0, atol=0.01)  # balanced overall


@pytest.mark.parametrize("size,experts", [("S", 8), pytest.param("G", 16, marks=pytest.mark.slow)])
def test_paper_configs_lower_abstractly(size, experts):
  from moejax.training.compile import compile_train_step  # pylint: disable=import-outside-toplevel
  config = dit_moe.get_config("paper")
  config.model.update(size=size, num_experts=experts)
  config.data.batch_size = 2
  out = compile_train_step(config, compile_=False)
  assert "func.func public @main" in out["hlo_text"]  # the whole train step lowered


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path, monkeypatch):
  from moejax.diffusion import metric  # pylint: disable=import-outside-toplevel
  from moejax.study.dit import run_study  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("MOEJAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setitem(metric.TRAIN, "steps", 100)
  metric.feature_classifier.cache_clear()
  summary = run_study(str(tmp_path / "study"), preset="smoke", processes=0)
  metric.feature_classifier.cache_clear()
  assert summary["runs_done"] == 2
  for model in summary["models"]:
    assert np.isfinite(model["fd_cnn"]) and 0 <= model["conditional_accuracy"] <= 1
  assert len(summary["routing"]["timestep"]["nmi"]) == 2  # one per MoE layer
  assert {"fd_by_model", "routing_timestep", "routing_class", "routing_position", "samples"} <= set(
      summary["figures"])
  assert "## Routing of" in (tmp_path / "study" / "report.md").read_text()


@pytest.mark.slow
def test_dit_trains_and_resumes_exactly_after_sigkill_ema_included(tmp_path):
  from moejax.tasks.dit import inference_params  # pylint: disable=import-outside-toplevel
  from moejax.training.restore import restore_run  # pylint: disable=import-outside-toplevel
  straight, killed = train_straight_and_killed("configs/dit_moe.py:smoke", tmp_path)
  resumed = json.loads((killed / "eval.json").read_text())
  assert resumed["resumed_from_step"] % 10 == 0 and resumed["resumed_from_step"] > 0
  runs = [restore_run(str(d)) for d in (straight, killed)]
  emas = [inference_params(run.state) for run in runs]
  assert emas[0] is not runs[0].state.params  # the EMA exists
  for a, b in zip(jax.tree.leaves(emas[0]), jax.tree.leaves(emas[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  diffs = [float(np.max(np.abs(np.asarray(e) - np.asarray(p))))
           for e, p in zip(jax.tree.leaves(emas[0]), jax.tree.leaves(runs[0].state.params))]
  assert max(diffs) > 0  # and it differs from the trained weights


def test_seed_interval_is_student_t():
  from moejax.study.intervals import seed_interval  # pylint: disable=import-outside-toplevel
  out = seed_interval([1.0, 3.0])
  assert out["estimate"] == 2.0 and out["seeds"] == 2
  np.testing.assert_allclose(out["ci"], [2.0 - 12.7062047, 2.0 + 12.7062047], rtol=1e-6)
  assert np.isnan(seed_interval([1.0])["ci"][0])


def test_count_cli_prints_the_papers_16_5b_model():
  from tests.conftest import run_module  # pylint: disable=import-outside-toplevel
  out = run_module("experiments.count", "--config=configs/dit_moe.py:paper",
                   "--config.model.size=G", "--config.model.num_experts=16")
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["name"].startswith("G/2-16E2A-16.5B")
  assert summary["total_params"] == 16_503_245_472 and summary["active_params"] == 3_180_186_272


def test_model_table_intervals_stay_in_the_metrics_range():
  """Two seeds (t = 12.7): the accuracy's interval is clipped to [0, 1], FD-CNN's to >= 0;
  an interval inside the range is the plain Student-t one."""
  runs = pd.DataFrame({"name": ["m-s0", "m-s1", "n-s0", "n-s1"], "seed": [0, 1, 0, 1],
                       "fd_cnn": [2.0, 40.0, 30.0, 30.2],
                       "conditional_accuracy": [0.88, 0.92, 0.500, 0.502]})
  table = dit_study.model_table(runs).set_index("name")
  assert table.loc["m", "conditional_accuracy_hi"] == 1.0
  assert table.loc["m", "fd_cnn_lo"] == 0.0
  half = 12.706 * 0.002 / np.sqrt(2) / np.sqrt(2)  # t * sd / sqrt(n), sd = 0.002 / sqrt(2)
  assert table.loc["n", "conditional_accuracy_lo"] == pytest.approx(0.501 - half, rel=1e-3)
  assert table.loc["n", "conditional_accuracy_hi"] == pytest.approx(0.501 + half, rel=1e-3)
