"""Verdicts of findings 3 to 7 and the groups each finding reads, from hand-made model tables
whose expected verdict is known (reproduced, not reproduced and inconclusive cases)."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from moejax.study import intervals, report, seeds, verdicts
from moejax.study.verdict_common import against, families

N = 200  # evaluation items per split
SPLITS = ("reason", "reason_train", "mem", "mem_train")


def row(name, family, d_model, experts, top_k, active, total, **metrics):
  out = dict(name=name, family=family, d_model=d_model, num_experts=experts, top_k=top_k,
             active_params=int(active), total_params=int(total), train_tokens=1e6,
             train_flops=6e6 * active, seed=0, status="done", final_eval_loss=3.0,
             train_loss_tail=2.5, reason_task_loss=2.0, reason_train_task_loss=1.8,
             reason_accuracy=0.3, reason_train_accuracy=0.4, mem_accuracy=0.1,
             mem_train_accuracy=0.5, reason_count=N)
  out.update(metrics)
  return out


def family_rows(family, d_model, top_k, accuracies, losses=None, train_losses=None, **extra):
  """A fixed-active family: a dense baseline then E = 4, 8, 16 (one row per accuracy)."""
  active = 1e5 * top_k * d_model / 64
  rows = []
  for i, (experts, acc) in enumerate(zip((1, 4, 8, 16), accuracies)):
    metrics = dict(reason_accuracy=acc, **{k: v[i] for k, v in extra.items()})
    if losses is not None:
      metrics["reason_task_loss"] = losses[i]
    if train_losses is not None:
      metrics["train_loss_tail"] = train_losses[i]
    rows.append(row(f"d{d_model}-E{experts}-k{top_k}", family, d_model, experts,
                    1 if experts == 1 else top_k, active, active * (1 + i), **metrics))
  return rows


def items_of(models, shuffle=False, seed=0):
  """Per-item arrays reproducing every accuracy and task loss of ``models``: accuracy a puts
  the first round(a N) items right (nested across models) or a random set of that size; task
  loss L gives every item NLL L over one answer token."""
  rng = np.random.default_rng(seed)
  out = {}
  for _, r in models.iterrows():
    arrays = {}
    for split in SPLITS:
      arrays[f"{split}_uid"] = np.array([f"{split}{j}" for j in range(N)])
      correct = np.arange(N) < round(r[f"{split}_accuracy"] * N)
      arrays[f"{split}_correct"] = rng.permutation(correct) if shuffle else correct
      if f"{split}_task_loss" in r and pd.notna(r[f"{split}_task_loss"]):
        arrays[f"{split}_nll"] = np.full(N, float(r[f"{split}_task_loss"]))
        arrays[f"{split}_answer_tokens"] = np.ones(N)
    out[r["name"]] = arrays
  return out


def boot_of(rows, shuffle=False):
  models = seeds.by_model(pd.DataFrame(rows))
  boot = intervals.ItemBootstrap(models, items_of(models, shuffle), num_resamples=300)
  return boot.with_intervals(), boot


def isoflop_rows(budget_best, budgets=(1e12, 1e13, 1e14), margin=0.2):
  """Iso-FLOP budgets of three models (dense d128, E4 d64, E16 d64: active sizes differ); at
  budget i the model ``budget_best[i]`` (0 dense, 1 E4, 2 E16) has accuracy 0.3 + margin."""
  rows = []
  for budget, best in zip(budgets, budget_best):
    for j, (d_model, experts) in enumerate(((128, 1), (64, 4), (64, 16))):
      active = 1e5 * d_model / 64
      rows.append(row(f"d{d_model}-E{experts}-C{budget:.0e}", f"C{budget:.0e}", d_model,
                      experts, 1, active, active * experts, train_flops=budget,
                      train_tokens=budget / (6 * active),
                      reason_accuracy=0.3 + (margin if j == best else 0.0),
                      reason_task_loss=2.0 - (margin if j == best else 0.0),
                      train_loss_tail=2.5 - 0.1 * j))
  return rows


def test_families_are_chosen_by_what_they_hold_not_by_name():
  rows = (family_rows("d64-k1", 64, 1, (0.1, 0.2, 0.3, 0.4))
          + isoflop_rows((0, 1, 2)))
  models = pd.DataFrame(rows)
  assert list(families(models)) == ["d64-k1"]  # budgets vary active params: not a family
  found = {v["finding"]: v for v in verdicts.all_verdicts(models)}
  assert set(found[2]["numbers"]["spearman"]) == {"d64-k1"}
  assert set(found[1]["numbers"]["spearman"]) == {"d64-k1"}
  assert len(found[5]["numbers"]["budgets"]) == 3  # and the budgets only in finding 5
  # A family whose runs trained different token counts holds nothing fixed either.
  uneven = pd.DataFrame(family_rows("d64-k1", 64, 1, (0.1, 0.2, 0.3, 0.4)))
  uneven.loc[0, "train_tokens"] = 2e6
  assert families(uneven) == {}


def test_reasoning_shape_with_intervals():
  peak, boot = boot_of(family_rows("d64-k1", 64, 1, (0.2, 0.5, 0.4, 0.3),
                                   losses=(2.0, 1.5, 1.7, 1.9)))
  found = verdicts.reasoning_vs_total(peak, boot)
  shape = found["numbers"]["shapes"]["d64-k1"]
  assert found["verdict"] == "reproduced", found["statement"]
  assert shape["accuracy_peak_advantage"]["estimate"] == pytest.approx(0.2)
  assert shape["accuracy_peak_advantage"]["ci"][0] > 0
  assert shape["task_loss_u_depth"]["estimate"] == pytest.approx(0.4)
  assert "interior peak lead +0.200 [95% CI" in found["statement"]
  rising, boot = boot_of(family_rows("d64-k1", 64, 1, (0.2, 0.3, 0.4, 0.5),
                                     losses=(2.0, 1.9, 1.8, 1.7)))
  found = verdicts.reasoning_vs_total(rising, boot)
  assert found["verdict"] == "not reproduced" and found["numbers"]["monotone_families"] == 1
  assert found["numbers"]["spearman_ci"]["d64-k1"] == [1.0, 1.0]
  # A one-item peak on shuffled items: the interval holds 0, the shape cannot be told.
  noisy, boot = boot_of(family_rows("d64-k1", 64, 1, (0.300, 0.305, 0.300, 0.300),
                                    losses=(2.0, 2.0, 2.0, 2.0)), shuffle=True)
  found = verdicts.reasoning_vs_total(noisy, boot)
  lo, hi = found["numbers"]["shapes"]["d64-k1"]["accuracy_peak_advantage"]["ci"]
  assert lo < 0 < hi and found["verdict"] == "inconclusive"


def topk_rows(k2_offset, k2_loss_shift=0.0):
  """d64 families k=1 and k=2 whose training losses overlap; at equal loss, k=2 is
  ``k2_offset`` more accurate (accuracy = 1.5 - 0.5 * loss, plus the offset)."""
  loss_k1 = np.array([2.6, 2.5, 2.4, 2.3])
  loss_k2 = np.array([2.55, 2.45, 2.35, 2.25]) + k2_loss_shift
  return (family_rows("d64-k1", 64, 1, 1.5 - 0.5 * loss_k1, train_losses=loss_k1)
          + family_rows("d64-k2", 64, 2, 1.5 - 0.5 * loss_k2 + k2_offset, train_losses=loss_k2))


def test_top_k_at_equal_training_loss():
  models, boot = boot_of(topk_rows(0.1))
  found = verdicts.top_k_effect(models, boot)
  assert found["verdict"] == "reproduced", found["statement"]
  equal = found["numbers"]["equal_loss"][0]
  assert (equal["k_low"], equal["k_high"]) == (1, 2)
  assert equal["reason_change"]["estimate"] == pytest.approx(0.1)
  assert equal["reason_change"]["ci"][0] > 0
  assert len(found["numbers"]["pairs"]) == 3  # E = 4, 8, 16 at k = 1 and 2
  worse, boot = boot_of(topk_rows(-0.1))
  assert verdicts.top_k_effect(worse, boot)["verdict"] == "not reproduced"
  # k moves the training loss by ~10%: the first half of the finding fails.
  moved = verdicts.top_k_effect(pd.DataFrame(topk_rows(0.1, k2_loss_shift=-0.25)))
  assert moved["verdict"] == "not reproduced" and moved["numbers"]["mean_loss_change"] < -0.03
  noisy, boot = boot_of(topk_rows(0.004), shuffle=True)
  assert verdicts.top_k_effect(noisy, boot)["verdict"] == "inconclusive"


def test_interpolation_in_training_loss():
  x_M = np.array([3.0, 1.0, 2.0])
  y_MX = np.array([[30.0, 3.0], [10.0, 1.0], [20.0, 2.0]])
  np.testing.assert_allclose(verdicts.interpolate_at(x_M, y_MX, np.array([1.0, 1.5, 3.0])),
                             [[10, 1], [15, 1.5], [30, 3]])


def test_optimal_sparsity_per_budget_and_its_trend():
  # Sparsest best at the smallest budget, dense best at the largest: the paper's trend.
  models, boot = boot_of(isoflop_rows((2, 1, 0)))
  found = verdicts.iso_flop(models, boot)
  assert found["verdict"] == "reproduced", found["statement"]
  budgets = found["numbers"]["budgets"]
  assert [b["reason_accuracy"]["estimate"] for b in budgets] == [0.9375, 0.75, 0.0]
  assert budgets[0]["reason_accuracy"]["ci"] == [0.9375, 0.9375]
  assert [b["reason_task_loss"]["estimate"] for b in budgets] == [0.9375, 0.75, 0.0]
  assert budgets[0]["train_loss"]["estimate"] == 0.9375  # lowest train_loss_tail: E16
  trend = found["numbers"]["trend_per_decade"]["reason_accuracy"]
  assert trend["estimate"] == pytest.approx(-0.9375 / 2) and trend["ci"][1] < 0
  flat, boot = boot_of(isoflop_rows((2, 2, 2)))
  found = verdicts.iso_flop(flat, boot)
  assert found["verdict"] == "not reproduced"
  assert found["numbers"]["trend_per_decade"]["reason_accuracy"]["ci"] == [0.0, 0.0]
  noisy, boot = boot_of(isoflop_rows((2, 1, 0), margin=0.005), shuffle=True)
  assert verdicts.iso_flop(noisy, boot)["verdict"] == "inconclusive"
  assert verdicts.iso_flop(pd.DataFrame(topk_rows(0.1)))["verdict"] == "not tested"


def test_loss_optimal_sparsity_interval_from_seeds():
  rows = isoflop_rows((2, 1, 0))
  runs = []
  for seed, shift in enumerate((-0.25, 0.25)):  # seeds disagree by more than the models do
    runs += [{**r, "name": f"{r['name']}-s{seed}", "seed": seed,
              "train_loss_tail": r["train_loss_tail"] + shift * (r["num_experts"] == 1)}
             for r in rows]
  models = seeds.by_model(pd.DataFrame(runs))
  budget = verdicts.iso_flop(models)["numbers"]["budgets"][0]
  assert budget["train_loss"]["estimate"] == 0.9375
  assert budget["train_loss"]["ci"] == [0.0, 0.9375]  # dense's seed range reaches the best


def sc_grpo_rows(grpo_gain=0.1, rescue=False, sc=True):
  rows = (family_rows("d64-k1", 64, 1, (0.2, 0.5, 0.4, 0.3))
          + family_rows("d128-k1", 128, 1, (0.25, 0.55, 0.45, 0.35)))
  df = pd.DataFrame(rows)
  if sc:
    for n, step in ((1, 0), (8, 1)):
      df[f"reason_sc{n}_accuracy"] = df["reason_accuracy"] + 0.1 * step
  df["grpo_reason_accuracy"] = df["reason_accuracy"] + grpo_gain
  if rescue:
    df.loc[df["num_experts"] == 16, "grpo_reason_accuracy"] = 0.9
  return df


def test_grpo_is_folded_into_finding_6():
  found = verdicts.test_time_compute(sc_grpo_rows())
  assert found["verdict"] == "reproduced", found["statement"]
  assert found["numbers"]["parts"] == {"self_consistency": "reproduced", "grpo": "reproduced"}
  assert found["numbers"]["grpo"]["mean_gain"] == pytest.approx(0.1)
  rescued = verdicts.test_time_compute(sc_grpo_rows(rescue=True))
  assert rescued["verdict"] == "not reproduced"
  assert rescued["numbers"]["grpo"]["rescued_families"] == ["d128-k1", "d64-k1"]
  assert verdicts.test_time_compute(sc_grpo_rows(grpo_gain=-0.1))["verdict"] == "not reproduced"
  grpo_only = verdicts.test_time_compute(sc_grpo_rows(sc=False))
  assert grpo_only["verdict"] == "reproduced" and "Self-consistency was not" in (
      grpo_only["statement"])
  # Rescue is read within fixed-active families only: iso-FLOP budgets are not families.
  budgets = pd.DataFrame(isoflop_rows((2, 1, 0))).assign(
      reason_sc1_accuracy=lambda d: d["reason_accuracy"],
      reason_sc8_accuracy=lambda d: d["reason_accuracy"] + 0.1)
  assert verdicts.test_time_compute(budgets)["numbers"]["sparsest_deficit_by_n"][1] == {}


def hp_rows(lr_gap_change, init_gap_change=0.0, sparsity_gap_change=0.2):
  """A d64-k1 family whose reasoning gap (train minus test accuracy) grows by
  ``sparsity_gap_change`` from dense to E=16, and the E=16 model at three learning rates and
  three init scales whose gap changes by the given amounts from smallest to largest value."""
  gaps = np.linspace(0.0, sparsity_gap_change, 4)
  rows = family_rows("d64-k1", 64, 1, (0.3,) * 4, reason_train_accuracy=0.3 + gaps)
  for r in rows:
    r.update(lr=1e-3, init_scale=1.0)
  base = rows[-1]
  for knob, values, change in (("lr", (3e-4, 3e-3), lr_gap_change),
                               ("init_scale", (0.5, 2.0), init_gap_change)):
    for value, delta in zip(values, (-change / 2, change / 2)):
      rows.append({**base, "name": f"{base['name']}-{knob}{value:g}", "family": "hp",
                   knob: value,
                   "reason_train_accuracy": base["reason_train_accuracy"] + delta})
  return rows


def test_generalization_gap_against_lr_init_and_sparsity():
  models, boot = boot_of(hp_rows(lr_gap_change=0.2))
  found = verdicts.hyperparameters(models, boot)
  assert found["verdict"] == "reproduced", found["statement"]
  effects = found["numbers"]["effects"]["reason_accuracy_gap"]
  assert effects["sparsity"]["estimate"] == pytest.approx(0.2)
  assert effects["lr"]["estimate"] == pytest.approx(0.2) and effects["lr"]["ci"][0] > 0
  assert found["numbers"]["knobs_moving_gap"] == ["lr"]
  assert found["numbers"]["knob_values"] == {"lr": [3e-4, 3e-3], "init_scale": [0.5, 2.0]}
  still, boot = boot_of(hp_rows(lr_gap_change=0.0))
  assert verdicts.hyperparameters(still, boot)["verdict"] == "not reproduced"
  noisy, boot = boot_of(hp_rows(lr_gap_change=0.01, sparsity_gap_change=0.01), shuffle=True)
  assert verdicts.hyperparameters(noisy, boot)["verdict"] == "inconclusive"
  assert verdicts.hyperparameters(pd.DataFrame(topk_rows(0.1)))["verdict"] == "not tested"


def test_verdict_table_for_a_person():
  models, boot = boot_of(hp_rows(lr_gap_change=0.2) + isoflop_rows((2, 1, 0)))
  table = report.verdict_table(report.json_safe(verdicts.all_verdicts(models, boot)))
  lines = table.splitlines()
  assert lines[0].split() == ["finding", "verdict", "numbers"] and len(lines) == 8
  assert lines[5].split()[:2] == ["5", "reproduced"] and "3 budgets" in lines[5]
  assert "lr +0.200 [" in lines[7]


def test_figures_of_findings_5_and_7(tmp_path, monkeypatch):
  matplotlib = pytest.importorskip("matplotlib")
  matplotlib.use("Agg")
  from analysis import figures  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(figures, "STUDY_FIGURES", {})  # the verdicts' figures only
  models, boot = boot_of(hp_rows(lr_gap_change=0.2) + isoflop_rows((2, 1, 0)))
  found = verdicts.all_verdicts(models, boot)
  made = figures.make_study_figures(models, tmp_path, found)
  for name in ("optimal_sparsity_vs_budget", "gap_vs_lr_init"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000, made[name]
  fig = figures.plot_optimal_sparsity(found[4])
  ax = fig.axes[0]
  assert "reproduced" in ax.get_title()
  assert len([l for l in ax.lines if l.get_linestyle() == "--"]) == 3  # 3 budgets: trends drawn
  two = verdicts.all_verdicts(pd.DataFrame(isoflop_rows((2, 1), budgets=(1e12, 1e13))))
  assert not [l for l in figures.plot_optimal_sparsity(two[4]).axes[0].lines
              if l.get_linestyle() == "--"]  # no line through two budgets
  gap = figures.plot_gap_vs_hparams(models, found[6])
  lr_line = gap.axes[0].lines[0]
  np.testing.assert_allclose(lr_line.get_xdata(), [3e-4, 1e-3, 3e-3])
  np.testing.assert_allclose(lr_line.get_ydata(), [0.1, 0.2, 0.3], atol=1e-9)
  base = figures._without_knob_sweep(models)  # pylint: disable=protected-access
  assert len(models) - len(base) == 4 and not base["name"].str.contains("lr|init").any()
  missing = figures.make_study_figures(pd.DataFrame(topk_rows(0.1)), tmp_path / "none",
                                       verdicts.all_verdicts(pd.DataFrame(topk_rows(0.1))))
  assert "skipped" in missing["optimal_sparsity_vs_budget"]
  assert "skipped" in missing["gap_vs_lr_init"]


def test_a_threshold_reached_up_to_float_rounding_counts():
  mean = spearmanr([1, 2, 3, 4], [0.24, 0.33, 0.45, 0.40])[0]  # 0.8, as 0.7999999999999999
  assert mean < 0.8 and against(mean, [mean, 0.9], 0.8) == "reproduced"
  assert against(0.79, [0.7, 0.9], 0.8) == "inconclusive"
  assert against(0.6, [0.5, 0.7], 0.8) == "not reproduced"
