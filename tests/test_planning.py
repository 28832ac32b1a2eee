"""Pod plans: input checks before any compile, HLO collective accounting, the sweep's search
rules; with libtpu (requirements-tpu.txt; skipped otherwise), the real train step compiled ahead
of time for small TPU v5p/v5e slices: a run that fits, one that does not, the CLI's JSON line,
and a sweep."""

import copy
import json
import subprocess
import sys

import pytest

from configs import lm_moe
from moejax import sharding
from moejax.errors import ConfigError
from moejax.planning import chips, comm_model, hlo_comm, plan, sweep
from tests.conftest import REPO, run_module

HAS_LIBTPU = chips.libtpu_path() is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed (scripts/setup.sh installs "
    "requirements-tpu.txt into .venv/tpu-compiler; or set MOEJAX_LIBTPU_DIR)")


def test_topology_names():
  topology = chips.parse_topology("v5p:4x4x4")
  assert topology.num_chips == 64 and topology.chip.name == "v5p"
  assert chips.parse_topology("v5e:2x4").num_chips == 8
  for bad in ("v9z:2x2", "v5p-128", "v5p:4"):
    with pytest.raises(ConfigError, match="expected CHIP:AxB"):
      chips.parse_topology(bad)


def test_bad_mesh_and_microbatches_fail_before_compiling():
  config, slice_ = lm_moe.get_config("smoke"), chips.parse_topology("v5p:2x2x1")
  with pytest.raises(ConfigError, match="8 devices"):
    plan.prepare_config(config, slice_, mesh={"fsdp": 8})
  with pytest.raises(ConfigError, match="config.train.microbatches"):
    plan.prepare_config(config, slice_, microbatches=4)  # 8 rows do not split 4 x 4 ways
  no_field = copy.deepcopy(config)
  del no_field.train["microbatches"]  # a train step without gradient accumulation
  with pytest.raises(ConfigError, match="has no config.train.microbatches"):
    plan.prepare_config(no_field, slice_, microbatches=4)
  prepared, sizes = plan.prepare_config(config, slice_, mesh={"fsdp": 4}, microbatches=1)
  assert sizes == {"data": 1, "fsdp": 4, "expert": 1, "tensor": 1}
  prepared, _ = plan.prepare_config(config, slice_, mesh={"fsdp": 4}, microbatches=2)
  assert prepared.train.microbatches == 2 and config.train.microbatches == 1


def test_mesh_candidates_follow_the_sharding_rules():
  config = lm_moe.get_config("paper")
  config.model.moe.num_experts = 64
  default_rules = list(config.sharding_rules)  # batch on (data, fsdp, expert), mlp on tensor
  drop = lambda v: [a for a in ([v] if isinstance(v, str) else v or [])
                    if a not in ("expert", "tensor")] or None
  config.sharding_rules = [(k, drop(v)) for k, v in default_rules]
  assert sweep.candidate_meshes(config, 64) == [{"fsdp": 64}]  # no rule targets "expert"
  config.sharding_rules = default_rules
  assert sweep.candidate_meshes(config, 64) == [
      {"fsdp": 64}, {"fsdp": 1, "expert": 64}, {"fsdp": 8, "expert": 8},
      {"fsdp": 16, "tensor": 4}]
  assert sweep.candidate_meshes(config, 4) == [{"fsdp": 4}, {"fsdp": 1, "expert": 4}]


def test_extrapolation_stops_only_when_the_constant_part_exceeds_hbm():
  gib = 2 ** 30
  assert sweep._never_fits([(4, 200 * gib), (8, 150 * gib)], 95 * gib)  # a = 100 GiB
  assert not sweep._never_fits([(4, 200 * gib), (8, 110 * gib)], 95 * gib)  # a = 20 GiB
  assert not sweep._never_fits([(4, 200 * gib)], 95 * gib)


HLO = """HloModule step, entry_computation_layout={()->()}

%body.1 (p: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p = (s32[], bf16[8,128]{1,0}) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element((s32[], bf16[8,128]{1,0}) %p), index=1
  %ag = bf16[32,128]{1,0} all-gather(bf16[8,128]{1,0} %x), channel_id=1, dimensions={0}
  %a2a = bf16[8,128]{1,0} all-to-all(bf16[8,128]{1,0} %x), channel_id=2, dimensions={0}
  ROOT %t = (s32[], bf16[8,128]{1,0}) tuple(s32[] %i, bf16[8,128]{1,0} %x)
}

%cond.1 (p: (s32[], bf16[8,128])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %ars = f32[4,4]{1,0} all-reduce-start(f32[4,4]{1,0} %a), channel_id=3, to_apply=%add
  %ard = f32[4,4]{1,0} all-reduce-done(f32[4,4]{1,0} %ars)
  %w = (s32[], bf16[8,128]{1,0}) while((s32[], bf16[8,128]{1,0}) %init), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"16"}}
  ROOT %r = f32[4,4]{1,0} copy(f32[4,4]{1,0} %ard)
}
"""


def test_collective_bytes_count_loop_bodies_by_their_trip_count():
  counted = hlo_comm.collective_bytes(HLO)
  assert counted["all-gather"] == 16 * 8 * 128 * 2  # operands, once per scanned iteration
  assert counted["all-to-all"] == 16 * 8 * 128 * 2
  assert counted["all-reduce"] == 4 * 4 * 4        # the -start half only
  assert counted["reduce-scatter"] == 0
  assert counted["total"] == 2 * 16 * 8 * 128 * 2 + 64


# As the TPU compiler prints it: operands by name only, no known_trip_count; the bound is in the
# loop condition.
TPU_HLO = """HloModule jit_train_step, is_scheduled=true

%region_1.1_spmd (param.1: (s32[], bf16[4,256])) -> (s32[], bf16[4,256]) {
  %param.1 = (s32[]{:T(128)}, bf16[4,256]{1,0:T(4,128)(2,1)}) parameter(0)
  %gte.2 = bf16[4,256]{1,0:T(4,128)(2,1)} get-tuple-element(%param.1), index=1
  %all-gather.7 = bf16[16,256]{1,0:T(8,128)(2,1)} all-gather(%gte.2), channel_id=1, replica_groups=mesh['axis_0'=4] {'axis_0'}, dimensions={0}
  ROOT %tuple.3 = (s32[]{:T(128)}, bf16[4,256]{1,0:T(4,128)(2,1)}) tuple(%gte.1, %gte.2)
}

%region_2.2_spmd (param.2: (s32[], bf16[4,256])) -> pred[] {
  %constant.9 = s32[]{:T(128)} constant(12)
  %param.2 = (s32[]{:T(128)}, bf16[4,256]{1,0:T(4,128)(2,1)}) parameter(0)
  %gte.5 = s32[]{:T(128)} get-tuple-element(%param.2), index=0
  ROOT %lt.1 = pred[]{:T(512)} compare(%gte.5, %constant.9), direction=LT
}

ENTRY %main.1_spmd (param.3: f32[64]) -> f32[64] {
  %param.3 = f32[64]{0:T(256)} parameter(0)
  %all-reduce.4 = f32[64]{0:T(256)} all-reduce(%param.3), channel_id=2, to_apply=%add
  %while.5 = (s32[]{:T(128)}, bf16[4,256]{1,0:T(4,128)(2,1)}) while(%tuple.8), condition=%region_2.2_spmd, body=%region_1.1_spmd
  ROOT %copy.1 = f32[64]{0:T(256)} copy(%all-reduce.4)
}
"""


def test_collective_bytes_in_the_tpu_compilers_format():
  counted = hlo_comm.collective_bytes(TPU_HLO)
  assert counted["all-gather"] == 12 * 4 * 256 * 2
  assert counted["all-reduce"] == 64 * 4


def test_reduce_scatter_fusions_count_as_reduce_scatter():
  text = TPU_HLO.replace("%region_1.1_spmd", "%all-reduce-scatter.1").replace(
      "all-gather(%gte.2)", "all-reduce(%gte.2)")
  counted = hlo_comm.collective_bytes(text)
  assert counted["reduce-scatter"] == 12 * 4 * 256 * 2 and counted["all-gather"] == 0


def test_plain_cpu_jax_loads_no_tpu_library():
  proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices())"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=True)
  assert "CpuDevice" in proc.stdout
  assert "tpu" not in proc.stderr.lower(), proc.stderr


@pytest.mark.slow
@needs_libtpu
def test_a_step_that_does_not_fit_reports_the_shortfall():
  config = lm_moe.get_config("smoke")
  config.model.vocab_size = 8192  # float32 logits of 2M tokens: 64 GiB, 16 GiB per chip
  config.data.update(batch_size=1024, seq_len=2048)
  figures = plan.plan_run(config, chips.parse_topology("v5e:2x2"), mesh={"fsdp": 4})
  assert figures["fits"] is False
  assert figures["error"].startswith("RESOURCE_EXHAUSTED")
  assert figures["shortfall_bytes"] > 0 and figures["hbm_bytes"] == chips.CHIPS["v5e"].hbm_bytes
  assert "DOES NOT FIT" in plan.format_plan(figures)


@needs_libtpu
def test_cli_plans_the_smoke_model_on_a_v5p_slice():
  proc = run_module("experiments.plan", "--config=configs/lm_moe.py:smoke",
                    "--topology=v5p:2x2x1", "--mesh=data=2,fsdp=2", timeout=600)
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert figures["fits"] is True and figures["chips"] == 4
  assert figures["mesh"] == {"data": 2, "fsdp": 2, "expert": 1, "tensor": 1}
  assert "fits" in proc.stdout.splitlines()[1]
  assert "WARNING" not in proc.stderr, proc.stderr[-2000:]  # libtpu's start-up is quiet
  assert 0 < figures["total_bytes"] <= figures["hbm_bytes"]
  assert figures["total_bytes"] >= figures["argument_bytes"] + figures["temp_bytes"]
  # FSDP gathers parameters, and gradients are reduced over the data-parallel chips.
  comm = figures["collective_bytes"]
  assert comm["all-gather"] > 0 and comm["reduce-scatter"] + comm["all-reduce"] > 0
  # Two layers scanned: the HLO FLOPs are scaled by (2 layers) / (1 layer) of the counts.
  assert 1.5 < figures["depth_factor"] < 2.0
  assert figures["hlo_flops_per_chip"] >= figures["model_flops_per_step"] / 4
  assert 0 < figures["mfu"] < 1


def test_cli_rejects_an_unknown_topology_in_one_line():
  proc = run_module("experiments.plan", "--config=configs/lm_moe.py:smoke",
                    "--topology=v9z:2x2", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "config error: --topology='v9z:2x2': expected CHIP:AxB[xC] with CHIP one of "
      "['v4', 'v5e', 'v5p', 'v6e'], e.g. v5p:4x4x4 (64 chips) or v5e:2x2"]


@pytest.mark.slow
@needs_libtpu
def test_sweep_plans_each_run_on_the_smallest_slice(tmp_path):
  rows = sweep.plan_sweep("configs/sweeps/optimal_sparsity.py:smoke", chip="v5p", max_chips=8,
                          csv_path=str(tmp_path / "plan.csv"))
  assert len(rows) == 3
  assert all(r["fits"] and r["topology"] == "v5p:2x2x1" and r["mesh"] == "fsdp=4" for r in rows)
  assert len((tmp_path / "plan.csv").read_text().strip().splitlines()) == 4
  assert "v5p:2x2x1" in sweep.format_table(rows)


def test_a_sweep_resumes_from_its_csv(tmp_path, monkeypatch):
  """Models already planned as fitting (same chip, microbatches, within max_chips) are read
  back typed and not compiled again; the others are planned anew."""
  planned = []

  def fake_plan(config, chip, max_chips, microbatches=None):
    name = sweep.task_lib.get(config).counts(config)["name"]
    planned.append(name)
    return sweep._row({"name": name, "topology": f"{chip}:2x2x1", "chips": 4,
                       "mesh": {"fsdp": 4}, "microbatches": microbatches or 1, "fits": True,
                       "argument_bytes": 2 ** 30, "temp_bytes": 2 ** 31,
                       "total_bytes": 3 * 2 ** 30, "hbm_bytes": 95 * 2 ** 30, "step_s": 0.5,
                       "mfu": 0.4, "compile_s": 12.0})

  monkeypatch.setattr(sweep, "plan_model", fake_plan)
  path = str(tmp_path / "plan.csv")
  smoke = "configs/sweeps/optimal_sparsity.py:smoke"
  first = sweep.plan_sweep(smoke, chip="v5p", csv_path=path)
  assert len(planned) == 3
  again = sweep.plan_sweep(smoke, chip="v5p", csv_path=path)
  assert len(planned) == 3 and again == first  # read back with the types it was written with
  rows = sweep.read_csv(path)
  name = first[0]["name"]
  rows[name]["fits"] = False
  sweep._write_csv(path, list(rows.values()))
  sweep.plan_sweep(smoke, chip="v5p", csv_path=path)
  assert planned[3:] == [name]  # only the row that did not fit
  sweep.plan_sweep(smoke, chip="v5p", microbatches=2, csv_path=path)
  assert len(planned) == 7  # other microbatches: every model again
  (tmp_path / "other.csv").write_text("model,loss\nx,1\n")
  with pytest.raises(ConfigError, match="not a plan table"):
    sweep.plan_sweep(smoke, chip="v5p", csv_path=str(tmp_path / "other.csv"))


def test_analytic_collective_bytes_of_fsdp_and_expert_parallelism():
  config = lm_moe.get_config("smoke")  # 59,808 float32 parameters, all sharded over fsdp
  state_bytes = 59_808 * 4
  fsdp = comm_model.analytic_bytes(config, {"data": 1, "fsdp": 4})
  assert fsdp["all-gather"] == 2 * state_bytes / 4  # forward + backward, one shard each
  assert fsdp["reduce-scatter"] == state_bytes and fsdp["all-reduce"] == 0
  assert fsdp["all-to-all"] == 0
  hybrid = comm_model.analytic_bytes(config, {"data": 2, "fsdp": 2})
  assert hybrid["all-reduce"] == state_bytes / 2  # the fsdp shard, summed over data
  ep = comm_model.analytic_bytes(config, {"data": 1, "fsdp": 2, "expert": 2})
  # 256 tokens / 4 chips x k=2 x d=32 x 4 bytes (float32), 4 exchanges per layer (no remat),
  # 2 layers
  assert ep["all-to-all"] == 64 * 2 * 32 * 4 * 4 * 2
  # The batch is split over expert too: every gradient shard but the experts' (2 layers x 4
  # experts x 3 x 32 x 64 = 49,152 parameters) is summed over the expert axis.
  non_expert = 59_808 - 49_152
  assert ep["all-reduce"] == non_expert * 4 / 2
  assert comm_model.analytic_bytes(config, {"expert": 4})["all-reduce"] == non_expert * 4


def test_a_ragged_exchange_counts_the_smaller_of_its_buffers():
  """Dropless EP sends 2T rows into a worst-case 8T-row buffer and 8T back into 2T: each way a
  device sends 2T rows on average, not the 10T its operands add up to."""
  forward = ("%r1 = bf16[512,64]{1,0} ragged-all-to-all(%send, %recv, %o1, %s1, %o2, "
             "/*index=5*/%s2), channel_id=1")
  back = ("%r2 = bf16[128,64]{1,0} ragged-all-to-all(%r1, %back_buf, %o1, %s2, %o2, "
          "/*index=5*/%s1), channel_id=2")
  lines = ["%send = bf16[128,64]{1,0} parameter(0)", "%recv = bf16[512,64]{1,0} parameter(1)",
           "%back_buf = bf16[128,64]{1,0} parameter(2)",
           *(f"%{n} = s32[4]{{0}} parameter({i + 3})" for i, n in enumerate(("o1", "s1", "o2",
                                                                          "s2"))),
           forward, back, "ROOT %out = bf16[128,64]{1,0} copy(%r2)"]
  text = "HloModule m\n\nENTRY %main () -> bf16[128,64] {\n" + "\n".join(
      "  " + line for line in lines) + "\n}\n"
  assert hlo_comm.collective_bytes(text)["all-to-all"] == 2 * 128 * 64 * 2


@needs_libtpu
def test_compiled_expert_exchange_matches_the_analytic_count():
  """The ragged all-to-alls of the compiled TPU step carry what comm_model counts (d_model 128:
  the TPU compiler pads narrower rows to its 128 lanes)."""
  config = lm_moe.get_config("smoke")
  config.model.d_model = 128
  topology = chips.parse_topology("v5p:2x2x1")
  for mesh in ({"expert": 4}, {"data": 2, "expert": 2}):
    measured = plan.plan_run(config, topology, mesh=mesh)["collective_bytes"]["all-to-all"]
    prepared, sizes = plan.prepare_config(config, topology, mesh)
    analytic = comm_model.analytic_bytes(prepared, sizes)["all-to-all"]
    assert analytic > 0 and abs(measured / analytic - 1) < 0.01, (mesh, measured, analytic)


@needs_libtpu
def test_the_pallas_dispatch_compiles_to_a_mosaic_kernel_under_expert_parallelism(tmp_path):
  """Planned from this CPU host, the ``pallas`` strategy is the TPU kernel (a Mosaic custom
  call), not the interpreter the host itself would run, inside the EP shard_map."""
  config = lm_moe.get_config("smoke")
  config.model.update(d_model=128)
  config.model.moe.dispatch = "pallas"
  hlo = tmp_path / "step.hlo"
  figures = plan.plan_run(config, chips.parse_topology("v5p:2x2x1"), mesh={"expert": 4},
                          hlo_path=str(hlo))
  text = hlo.read_text()
  assert figures["fits"] and 'custom_call_target="tpu_custom_call"' in text
  assert text.count("ragged-all-to-all(") == 4  # there and back, forward and backward


@needs_libtpu
def test_a_mesh_axis_may_split_a_physical_torus_axis():
  """fsdp 8 x expert 8 on a 4x4x4 torus: jax.make_mesh refuses (8 is no product of physical
  axes); the mesh splits one physical axis instead, with every chip used once."""
  devices = plan.compile_only_devices(chips.parse_topology("v5p:4x4x4"))
  mesh = sharding.make_mesh({"fsdp": 8, "expert": 8}, devices=devices)
  assert dict(mesh.shape) == {"fsdp": 8, "expert": 8}
  assert len({d.id for d in mesh.devices.flat}) == 64


@pytest.mark.slow
@needs_libtpu
def test_compiled_flops_count_every_microbatch():
  """Gradient accumulation is a scan, which cost analysis counts once: the planner scales it,
  so 2 microbatches of the same global batch report about the FLOPs of 1 (the optimizer
  update outside the scan is counted twice, a small share)."""
  config = lm_moe.get_config("smoke")
  config.data.batch_size = 128  # the step's matmuls, not the optimizer, dominate the FLOPs
  topology = chips.parse_topology("v5p:2x2x1")
  one, two = (plan.plan_run(config, topology, mesh={"data": 2, "fsdp": 2}, microbatches=m)
              for m in (1, 2))
  assert two["microbatches"] == 2
  print("HLO FLOPs per chip, 1 vs 2 microbatches:", one["hlo_flops_per_chip"],
        two["hlo_flops_per_chip"])
  assert two["hlo_flops_per_chip"] == pytest.approx(one["hlo_flops_per_chip"], rel=0.1)
