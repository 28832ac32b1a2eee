"""The ViT-MoE study: its sweep (FLOP-matched dense baselines), the analyses on hand-made
routing data, the paper presets lowering abstractly, and the smoke study end to end."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from configs import vit_moe
from configs.sweeps import vmoe as vmoe_sweep
from moejax import counting
from moejax.study import vmoe_analysis as analysis
from moejax.training.compile import compile_train_step
from tests.conftest import run_module


def _ffn_flops_per_token(model):
  """FFN multiply-adds per token summed over blocks (dense hidden, or k experts' hidden)."""
  from moejax.models.vit import trunk_config  # pylint: disable=import-outside-toplevel
  trunk = trunk_config(model)
  return sum(trunk.moe.top_k * trunk.moe.d_ff if moe else trunk.d_ff
             for moe in trunk.placement)


def test_sweep_dense_baselines_match_ffn_flops_and_names_are_unique():
  runs = vmoe_sweep.get_sweep("tiny")
  assert len({r.name for r in runs}) == len(runs) == 19
  for family in ("k1", "k2"):
    flops = {_ffn_flops_per_token(r.config.model) for r in runs if r.family == family}
    actives = {counting.vit_summary(r.config)["active_params"] for r in runs
               if r.family == family}
    assert len(flops) == 1 and len(actives) == 1, (family, flops, actives)
  seeds = {(r.name.rsplit("-s", 1)[0], r.config.seed, r.config.data.seed) for r in runs}
  assert all(seed == data_seed for _, seed, data_seed in seeds)


def test_accuracy_table_intervals_and_trend():
  rng = np.random.default_rng(0)
  image = np.arange(400)
  items, rows = {}, []
  for e, p in ((1, 0.6), (4, 0.7), (8, 0.8), (16, 0.9)):
    runs = []
    for seed in (0, 1):
      name = f"E{e}-s{seed}"
      items[name] = {"image": image, "correct": rng.uniform(size=400) < p}
      runs.append(name)
    rows.append({"name": f"E{e}", "family": "k1", "runs": ",".join(runs),
                 "total_params": 100 * e, "num_experts": e})
  models, trends = analysis.accuracy_table(pd.DataFrame(rows), items, num_resamples=200)
  assert np.all(models["test_accuracy_lo"] < models["test_accuracy"])
  assert np.all(models["test_accuracy"] < models["test_accuracy_hi"])
  assert trends["k1"]["estimate"] == pytest.approx(1.0) and trends["k1"]["ci"][0] > 0.5
  items["E4-s1"] = {"image": image[::-1], "correct": items["E4-s1"]["correct"]}
  with pytest.raises(ValueError, match="other test images"):
    analysis.accuracy_table(pd.DataFrame(rows), items)


def test_class_specialization_finds_planted_structure_and_null_does_not():
  rng = np.random.default_rng(0)
  labels_R = rng.integers(0, 4, size=300)
  # Layer 0: the first choice is the class (perfect specialisation); layer 1: random.
  first_RS = np.stack([np.repeat(labels_R[:, None], 5, 1), rng.integers(0, 4, (300, 5))])
  choices_MRSK = np.stack([first_RS, first_RS], -1)
  spec = analysis.class_specialization(choices_MRSK, labels_R, 4, 4, num_permutations=5)
  assert spec["nmi"][0] == pytest.approx(1.0) and spec["nmi"][1] < 0.05
  assert spec["null_p95"][0] < 0.05
  np.testing.assert_allclose(spec["usage_MCE"][0], np.eye(4))


def test_task_usage_overlap_and_top_expert_masks():
  # Task 0 uses experts 0 and 1, task 1 experts 1 and 2 (half and half): overlap 0.5.
  choices_MRSK = np.array([[[[0, 1]], [[1, 2]], [[0, 1]], [[1, 2]]]])
  task_R = np.array([0, 1, 0, 1])
  usage = analysis.task_usage(choices_MRSK, task_R, 2, 4)
  np.testing.assert_allclose(usage[0], [[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]])
  assert analysis.usage_overlap(usage) == [pytest.approx(0.5)]
  mask = analysis.keep_top_experts(np.array([[[0.1, 0.6, 0.3, 0.0], [0.5, 0.0, 0.2, 0.3]]]), 2)
  np.testing.assert_array_equal(mask[0], [[0, 1, 1, 0], [1, 0, 0, 1]])


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["s32", "b16"])
def test_vmoe_paper_presets_lower_abstractly(preset):
  config = vit_moe.get_config(preset)
  config.data.batch_size = 8
  if preset == "b16":
    config.model.num_layers = 4  # the same blocks; fewer repeats keep the test quick
  timings = compile_train_step(config, compile_=False)
  assert "stablehlo" in timings["hlo_text"] or "func.func" in timings["hlo_text"]


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
  run_module("experiments.reproduce_vmoe", "--preset=smoke", f"--workdir={tmp_path}",
             "--processes=1", timeout=900)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["runs_done"] == summary["runs"] == 3
  assert len(summary["models"]) == 2 and all(
      m["test_accuracy_lo"] <= m["test_accuracy"] <= m["test_accuracy_hi"]
      for m in summary["models"])
  curve = next(iter(summary["capacity_curves"].values()))
  assert {(row["capacity_factor"], row["bpr"]) for row in curve} >= {(0.25, True), (0.25, False)}
  dropped = [row["dropped_fraction"] for row in curve if row["bpr"]]
  assert dropped == sorted(dropped, reverse=True) and dropped[0] > dropped[-1]
  assert len(summary["specialization"]["nmi"]) == 1
  assert set(summary["task_routing"]) == {"per_task"}
  report = (tmp_path / "report.md").read_text()
  for heading in ("Test accuracy at fixed active parameters", "Inference capacity",
                  "Expert specialisation", "Task-conditioned routing"):
    assert heading in report
  assert {"accuracy_vs_total_params", "class_specialization", "task_pruning"} <= set(
      summary["figures"])
  for figure in summary["figures"].values():
    assert os.path.exists(figure["png"]) and os.path.exists(figure["pdf"])
