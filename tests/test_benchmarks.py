"""The MoE layer benchmark runs end to end on a tiny grid and prints its JSON contract."""

import json

import pytest

from tests.conftest import run_module

_AUTOTUNED = "openblas (kernels_cpu) or xla dot, measured per shape class"  # moe_layer.AUTOTUNED


@pytest.mark.slow
def test_moe_layer_benchmark_prints_every_strategy_and_routing():
  proc = run_module("benchmarks.moe_layer", "--tokens=64", "--d_model=16", "--experts=4",
                    "--top_k=1,2", "--repeats=1",
                    "--strategies=sorted,experts,einsum,ragged_dot,dense_blas", timeout=300)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = {(r["strategy"], r["routing"], r["top_k"]) for r in report["results"]}
  for k in (1, 2):
    assert {("sorted", "balanced", k), ("sorted", "skewed", k), ("experts", "balanced", k),
            ("einsum", "balanced", k), ("ragged_dot", "balanced", k)} <= rows
  for row in report["results"]:
    assert row["ratio_vs_dense"] > 0 and row["page_faults"] >= 0
    assert {"tokens", "d_model", "num_experts", "top_k"} <= row.keys()
  assert report["dtype"] == "float32" and report["device"]
  assert report["expert_gemm"] in ("openblas (kernels_cpu)", "xla dot", _AUTOTUNED)
  for row in report["results"]:  # what ran each expert GEMM, where expert_matmul ran
    assert (row["strategy"] in ("sorted", "experts", "dense_blas")) == ("gemm" in row)
    if "gemm" in row:
      assert row["gemm"].keys() == {"forward", "input_grad", "weight_grad"}
      assert set(row["gemm"].values()) <= {"blas", "xla", "mix"}
  if report["expert_gemm"] != "xla dot":  # the dense FFN on the CPU kernel, as one expert
    assert {("dense_blas", "balanced", 1)} <= {(r["strategy"], r["routing"], r["num_experts"])
                                                for r in report["results"]}
