"""Study verdicts and report from a hand-made results table with known trends."""

import json

import numpy as np
import pandas as pd

from moejax.study import report, verdicts


def table(mem_trend=+1, reason_peak=True):
  rows = []
  for family, active in (("d64-k1", 1e5), ("d128-k1", 4e5)):
    for i, experts in enumerate((1, 4, 8, 16)):
      rows.append(dict(
          name=f"{family}-E{experts}", family=family, d_model=64, num_experts=experts, top_k=1,
          total_params=active * (1 + i), active_params=active, final_eval_loss=3.0 - 0.1 * i,
          mem_train_accuracy=0.2 + mem_trend * 0.1 * i, mem_accuracy=0.1, mem_train_count=200,
          reason_accuracy=[0.1, 0.3, 0.2, 0.15][i] if reason_peak else 0.1 + 0.05 * i,
          reason_task_loss=[2.0, 1.5, 1.7, 1.9][i] if reason_peak else 2.0 - 0.1 * i,
          reason_count=100, status="done"))
  return pd.DataFrame(rows)


def test_trends_give_the_expected_verdicts():
  found = {v["finding"]: v for v in verdicts.all_verdicts(table())}
  assert found[1]["verdict"] == "reproduced" and found[1]["numbers"]["mean_spearman"] == -1.0
  assert found[2]["verdict"] == "reproduced" and found[2]["numbers"]["mean_spearman"] == 1.0
  assert found[3]["verdict"] == "reproduced" and found[3]["numbers"]["interior_peaks"] == 2
  assert found[5]["verdict"] == found[7]["verdict"] == "not tested"


def test_opposite_trends_are_not_reproduced():
  found = {v["finding"]: v for v in verdicts.all_verdicts(table(mem_trend=-1,
                                                                 reason_peak=False))}
  assert found[2]["verdict"] == "not reproduced"
  assert found[3]["verdict"] == "not reproduced"


def test_wilson_interval_contains_the_estimate_and_narrows_with_items():
  lo, hi = report.wilson_interval(0.5, 100)
  assert lo < 0.5 < hi and np.isclose(hi - lo, 0.192, atol=0.005)
  lo2, hi2 = report.wilson_interval(0.5, 10_000)
  assert hi2 - lo2 < (hi - lo) / 5


def test_report_and_summary_are_written(tmp_path):
  df = table()
  summary = report.write(str(tmp_path), df, verdicts.all_verdicts(df), {}, {"clark": "n/a"},
                         {"preset": "test", "wall_time_s": 1.0})
  assert summary["memorization_spearman_total_params"] == 1.0
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["runs_done"] == 8 and len(saved["verdicts"]) == 7
  text = (tmp_path / "report.md").read_text()
  assert "2. **reproduced**" in text and "| name |" in text
