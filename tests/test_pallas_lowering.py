"""The grouped matmul kernels lower for real targets from a CPU host, and compile for TPU.

Interpretation (tests/test_pallas_gmm.py) does not check TPU block-shape rules; lowering does:
``jax.jit(f).trace(...).lower(lowering_platforms=("tpu",))`` runs the Mosaic lowering of every
kernel in f, and ``("cuda",)`` the Triton one (selected by passing Triton compiler params). Each
lowering here is of forward + backward: the three kernels gmm, gmm with w transposed (dx) and
tgmm (dw), each with its own block shapes.

With libtpu found as the planner finds it (moejax/planning/chips.py: scripts/setup.sh installs
it off sys.path; skipped otherwise), the expert FFN at the paper's shapes (d_model 2048, E=128) is also compiled by the
TPU compiler for v5e and v5p topologies, without a TPU (``jax.experimental.topologies``), and
every chosen tiling class for v5e (slow).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from kernels_pallas import gmm_gpu, gmm_tpu, schedule, tiling
from kernels_pallas import grouped_matmul as gm
from moejax.planning import chips

# Per dim, one size for each value class the TPU chooser returns (kernels_pallas/tiling.py).
TPU_M = {"full": (20, 1), "128": (1000, 8), "256": (2048, 8), "512": (65536, 16)}  # (m, G)
TPU_KN = {"full": 100, "128": 600, "256": 1280, "384": 768, "512": 2048}


def _lower(fn, *avals, platform):
  return jax.jit(fn).trace(*avals).lower(lowering_platforms=(platform,)).as_text()


def _fwd_bwd(target, **options):
  def f(x, w, sizes):
    loss = lambda x, w: jnp.sum(gm.gmm(x, w, sizes, target=target, **options)
                                .astype(jnp.float32))
    return jax.value_and_grad(loss, argnums=(0, 1))(x, w)
  return f


def _avals(m, k, n, g, dtype):
  return (jax.ShapeDtypeStruct((m, k), dtype), jax.ShapeDtypeStruct((g, k, n), dtype),
          jax.ShapeDtypeStruct((g,), jnp.int32))


def _tpu_cases():
  """Every (tk, tn) class pair, with tm cycling through its classes, in both dtypes."""
  m_classes = itertools.cycle(TPU_M)
  for dtype in ("float32", "bfloat16"):
    for k_class, n_class in itertools.product(TPU_KN, TPU_KN):
      yield dtype, next(m_classes), k_class, n_class


@pytest.mark.parametrize("dtype,m_class,k_class,n_class", list(_tpu_cases()))
def test_every_chosen_tpu_tiling_lowers_with_mosaic(dtype, m_class, k_class, n_class):
  (m, g), k, n = TPU_M[m_class], TPU_KN[k_class], TPU_KN[n_class]
  tm, tk, tn = tiling.choose_tiling(m, k, n, g, dtype, "tpu")
  for label, tile, dim, cls in (("tm", tm, m, m_class), ("tk", tk, k, k_class),
                                ("tn", tn, n, n_class)):  # the case hits the class it names
    assert (tile >= dim) if cls == "full" else tile == int(cls), (label, tile, cls)
  text = _lower(_fwd_bwd("tpu"), *_avals(m, k, n, g, dtype), platform="tpu")
  assert text.count("tpu_custom_call") == 3  # gmm, gmm(w^T) for dx, tgmm for dw


GPU_SHAPES = [(m, k, n, g) for m, g in ((7, 1), (1000, 8), (8192, 8)) for k in (8, 2048)
              for n in (24, 1000)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_chosen_gpu_tiling_lowers_with_triton(dtype):
  seen = set()
  for m, k, n, g in GPU_SHAPES:
    tiles = tiling.choose_tiling(m, k, n, g, dtype, "gpu")
    if tiles in seen:
      continue
    seen.add(tiles)
    params = gmm_gpu.compiler_params(num_warps=4, num_stages=2)
    text = _lower(_fwd_bwd("gpu", compiler_params=params), *_avals(m, k, n, g, dtype),
                  platform="cuda")
    assert text.count("__gpu$xla.gpu.triton") == 3, tiles
  # Every tm, tk and tn class of the GPU chooser was lowered.
  assert {t[0] for t in seen} == {16, 64, 128} and {t[1] for t in seen} == {16, 64}
  assert {t[2] for t in seen} == {32, 128}


@pytest.mark.parametrize("target,platform", [("tpu", "tpu"), ("gpu", "cuda")])
def test_group_offset_and_explicit_tiles_lower(target, platform):
  tiles = (256, 256, 128) if target == "tpu" else (32, 32, 64)
  params = {"compiler_params": gmm_gpu.compiler_params()} if target == "gpu" else {}

  def f(x, w_local, sizes, offset):
    loss = lambda x, w: jnp.sum(gm.gmm(x, w, sizes, offset, target=target, tiling=tiles,
                                       **params))
    return jax.grad(loss, argnums=(0, 1))(x, w_local)

  x, w, sizes = _avals(1024, 512, 256, 16, jnp.bfloat16)
  w_local = jax.ShapeDtypeStruct((4, 512, 256), jnp.bfloat16)
  _lower(f, x, w_local, sizes, jax.ShapeDtypeStruct((), jnp.int32), platform=platform)


@pytest.mark.parametrize("target,platform", [("tpu", "tpu"), ("gpu", "cuda")])
def test_expert_parallel_gmm_lowers_under_shard_map_with_vma_checks(target, platform):
  """Under shard_map (check_vma=True) the offset varies over the expert axis and the rows are
  replicated: the kernels declare their outputs' varying axes and the gradient of the
  replicated rows is summed over the axis (kernels_pallas/shard.py). A 1-device mesh suffices
  for the types."""
  mesh = jax.make_mesh((1,), ("expert",))
  params = {"compiler_params": gmm_gpu.compiler_params()} if target == "gpu" else {}

  def local(x, w_local, sizes):
    offset = jax.lax.axis_index("expert") * w_local.shape[0]
    return jax.lax.psum(gm.gmm(x, w_local, sizes, offset, target=target, **params), "expert")

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("expert"), P()), out_specs=P())
  f = jax.value_and_grad(lambda x, w, s: jnp.sum(sharded(x, w, s)), argnums=(0, 1))
  x, w, sizes = _avals(256, 128, 256, 8, jnp.bfloat16)
  put = lambda a, spec: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec))
  text = _lower(f, put(x, P()), put(w, P("expert")), put(sizes, P()), platform=platform)
  assert text.count("tpu_custom_call" if target == "tpu" else "__gpu$xla.gpu.triton") == 3


def test_mosaic_lowering_rejects_a_block_that_breaks_the_tpu_rules():
  """The check above can fail: a float32 block of 12 rows (not a multiple of 8, not the whole
  dim) is refused by Mosaic, so the kernel is called directly, past moejax's own check."""
  def f(x, w, sizes):
    plan = schedule.row_schedule(sizes, 0, num_local=2, num_rows=48, rows=48, tm=12)
    return gmm_tpu.gmm(x, w, plan, tiling=(12, 128, 128), out_dtype=jnp.float32)

  with pytest.raises(ValueError, match="divisible by 8 and 128"):
    _lower(f, *_avals(48, 128, 128, 2, jnp.float32), platform="tpu")


# --- TPU compilation (needs libtpu, not a TPU) ---

HAS_LIBTPU = chips.libtpu_path() is not None
PAPER = {"d_model": 2048, "num_experts": 128, "d_ff": 1024, "rows": 4096 * 8}  # T=4096, K=8


def _expert_ffn_grad(x_MD, w_gate_EDF, w_up_EDF, w_down_EFD, sizes_E, tiles=None):
  """forward + backward of the SwiGLU experts on sorted rows, all matmuls through gmm."""
  def loss(x, w_gate, w_up, w_down):
    mm = lambda a, w: gm.gmm(a, w, sizes_E, target="tpu", tiling=tiles)
    hidden = jax.nn.silu(mm(x, w_gate)) * mm(x, w_up)
    return jnp.sum(jnp.square(mm(hidden, w_down).astype(jnp.float32)))
  return jax.grad(loss, argnums=(0, 1, 2, 3))(x_MD, w_gate_EDF, w_up_EDF, w_down_EFD)


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed")
@pytest.mark.parametrize("topology,dtype,tiles", [
    ("v5e:2x2", jnp.bfloat16, None), ("v5p:2x2x2", jnp.bfloat16, None),
    pytest.param("v5e:2x2", jnp.float32, None, marks=pytest.mark.slow),
    pytest.param("v5p:2x2x2", jnp.float32, None, marks=pytest.mark.slow),
    # The chooser's largest tiles in float32: the most VMEM, on the smallest-VMEM chip.
    pytest.param("v5e:2x2", jnp.float32, (512, 512, 512), marks=pytest.mark.slow)])
def test_expert_ffn_compiles_for_tpu_at_the_paper_shapes(topology, dtype, tiles):
  device = chips.compile_only_devices(chips.parse_topology(topology))[0]
  on_device = jax.sharding.SingleDeviceSharding(device)
  d, e, f, m = PAPER["d_model"], PAPER["num_experts"], PAPER["d_ff"], PAPER["rows"]
  shapes = [((m, d), dtype), ((e, d, f), dtype), ((e, d, f), dtype), ((e, f, d), dtype),
            ((e,), jnp.int32)]
  avals = [jax.ShapeDtypeStruct(s, t, sharding=on_device) for s, t in shapes]
  fn = functools.partial(_expert_ffn_grad, tiles=tiles)
  compiled = jax.jit(fn).trace(*avals).lower(
      lowering_platforms=("tpu",)).compile()
  memory = compiled.memory_analysis()
  assert memory.temp_size_in_bytes < 2 ** 30  # no dense [m, E, ...] intermediate
  print(f"{topology} {jnp.dtype(dtype).name} tiles {tiles}: "
        f"code {memory.generated_code_size_in_bytes} B, "
        f"temp {memory.temp_size_in_bytes / 2 ** 20:.1f} MiB")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed")
@pytest.mark.parametrize("dtype,m_class,k_class,n_class", list(_tpu_cases()))
def test_every_chosen_tpu_tiling_compiles_for_v5e(dtype, m_class, k_class, n_class):
  """The Mosaic compiler (not only the lowering) accepts every tiling class, unaligned
  full-dim blocks included (about 2 s each)."""
  device = chips.compile_only_devices(chips.parse_topology("v5e:2x2"))[0]
  on_device = jax.sharding.SingleDeviceSharding(device)
  (m, g), k, n = TPU_M[m_class], TPU_KN[k_class], TPU_KN[n_class]
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_device)
           for a in _avals(m, k, n, g, dtype)]
  jax.jit(_fwd_bwd("tpu")).trace(*avals).lower(lowering_platforms=("tpu",)).compile()
