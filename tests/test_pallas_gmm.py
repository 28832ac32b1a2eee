"""The Pallas grouped matmul on CPU: values and gradients of gmm/tgmm (both kernels, interpreted)
against a per-group float64 loop and ``jax.lax.ragged_dot``; the schedules and tilings; errors.

Tolerances. float32: the kernels accumulate in float32 like the references, so |err| <=
1e-5 |ref| + 1e-4 (k <= 256 products of N(0, 1) values). bfloat16 inputs: every product of two
bfloat16 numbers is exact in float32 and the accumulation is float32, so the only sizeable error
is the final rounding of the output to bfloat16, at most half an ulp (2^-9 relative); we allow
one ulp, 2^-8 |ref|, + 1e-3 for the float32 accumulation error. With
``preferred_element_type=float32`` the bfloat16 case must meet the float32 bound: a kernel with
a bfloat16 accumulator across k tiles fails it (checked by mutation). XLA:CPU computes a single
bfloat16 dot with float32 products and sums whatever its declared output type, so the precision
of one tile's dot is not observable here. The reference gets the same bfloat16 inputs (and the
same bfloat16 cotangent), computed in float64.
"""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kernels_pallas import grouped_matmul as gm
from kernels_pallas import schedule as sched
from kernels_pallas import tiling

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0},
                             static_argnames=("target", "tiling", "out_dtype", "offset"))

# name: (m, k, n, group sizes); every case has a property the contract names.
CASES = {
    "unaligned_rows_past_empty": (37, 24, 40, [5, 0, 17, 3, 7]),   # rows 32..36: no group
    "all_rows_in_one_group": (20, 16, 24, [0, 0, 20, 0]),
    "one_group": (19, 8, 16, [19]),
    "sixty_four_groups": (100, 16, 32, None),                       # random, many empty
    "several_tiles": (70, 160, 144, [9, 30, 0, 1, 20]),             # k, n past one tile
    "groups_past_the_rows": (30, 8, 16, [10, 25, 5]),               # sizes sum to 40 > m
}
# Small tiles so that the cases above span several row, k and n tiles.
SMALL_TILES = {"tpu": (8, 128, 128), "gpu": (16, 16, 16)}


def _sizes(name):
  m, _, _, sizes = CASES[name]
  if sizes is None:  # 64 groups, about half empty, 90 of the 100 rows
    rng = np.random.default_rng(3)
    sizes = rng.multinomial(90, rng.dirichlet(np.full(64, 0.3)))
  return np.asarray(sizes, np.int32)


def _operands(name, dtype, seed=0):
  m, k, n, _ = CASES[name]
  sizes = _sizes(name)
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (m, k)).astype(dtype)
  w = jax.random.normal(keys[1], (len(sizes), k, n)).astype(dtype)
  c = jax.random.normal(keys[2], (m, n)).astype(dtype)  # the output cotangent
  return x, w, jnp.asarray(sizes), c


def _bounds(sizes):
  end = np.cumsum(sizes)
  return end - sizes, end


def ref_gmm(x, w, sizes, offset=0):
  """float64 per-group loop; w holds groups offset .. offset+len(w)-1."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  y = np.zeros((x.shape[0], w.shape[2]))
  start, end = _bounds(np.asarray(sizes))
  for g in range(w.shape[0]):
    y[start[g + offset]:end[g + offset]] = x[start[g + offset]:end[g + offset]] @ w[g]
  return y


def ref_tgmm(x, dy, sizes, offset=0, num_local=None):
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  num_local = len(sizes) if num_local is None else num_local
  start, end = _bounds(np.asarray(sizes))
  return np.stack([x[start[g]:end[g]].T @ dy[start[g]:end[g]]
                   for g in range(offset, offset + num_local)])


def ragged_dot_ref(x, w, sizes):
  """jax.lax.ragged_dot with the rows past the groups zeroed (moejax's contract)."""
  y = jax.lax.ragged_dot(x, w, sizes, precision=jax.lax.Precision.HIGHEST,
                         preferred_element_type=jnp.float32)
  return jnp.where((jnp.arange(x.shape[0]) < jnp.sum(sizes))[:, None], y, 0.0)


def assert_close(actual, expected, dtype):
  actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  rtol, atol = (2.0 ** -8, 1e-3) if jnp.dtype(dtype) == jnp.bfloat16 else (1e-5, 1e-4)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@fast_jit
def gmm_and_vjp(x, w, sizes, c, target, tiling=None, out_dtype=None, offset=None):
  """y = gmm(x, w) and (dx, dw) = vjp(c), all through the kernels (interpreted)."""
  f = lambda x, w: gm.gmm(x, w, sizes, offset, target=target, tiling=tiling,
                          preferred_element_type=out_dtype, interpret=True)
  y, vjp = jax.vjp(f, x, w)
  return (y, *vjp(c.astype(y.dtype)))


@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("name", list(CASES))
def test_gmm_values_and_gradients_float32(name, target):
  x, w, sizes, c = _operands(name, jnp.float32)
  y, dx, dw = gmm_and_vjp(x, w, sizes, c, target=target)
  assert y.shape == (x.shape[0], w.shape[2]) and y.dtype == jnp.float32
  assert_close(y, ref_gmm(x, w, sizes), jnp.float32)
  assert_close(y, np.asarray(ragged_dot_ref(x, w, sizes)), jnp.float32)
  # dx = c @ w[g]^T on each group's rows, zeros past them; dw[g] = x[g]^T @ c[g].
  w_t = np.swapaxes(np.asarray(w), 1, 2)
  assert_close(dx, ref_gmm(c, w_t, sizes), jnp.float32)
  assert_close(dw, ref_tgmm(x, c, sizes), jnp.float32)
  _, ragged_vjp = jax.vjp(lambda x, w: ragged_dot_ref(x, w, sizes), x, w)
  for ours, theirs in zip((dx, dw), ragged_vjp(c)):
    assert_close(ours, np.asarray(theirs), jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("name", ["unaligned_rows_past_empty", "several_tiles"])
def test_gmm_small_tiles_span_many_tiles(name, target):
  """Explicit small tiles: groups cross row tiles, k and n take several tiles each."""
  x, w, sizes, c = _operands(name, jnp.float32, seed=1)
  y, dx, dw = gmm_and_vjp(x, w, sizes, c, target=target, tiling=SMALL_TILES[target])
  assert_close(y, ref_gmm(x, w, sizes), jnp.float32)
  assert_close(dx, ref_gmm(c, np.swapaxes(np.asarray(w), 1, 2), sizes), jnp.float32)
  assert_close(dw, ref_tgmm(x, c, sizes), jnp.float32)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("name", ["unaligned_rows_past_empty", "sixty_four_groups"])
def test_gmm_bfloat16(name, target):
  x, w, sizes, c = _operands(name, jnp.bfloat16)
  y, dx, dw = gmm_and_vjp(x, w, sizes, c, target=target)
  assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  assert_close(y, ref_gmm(x, w, sizes), jnp.bfloat16)
  assert_close(dx, ref_gmm(c, np.swapaxes(np.asarray(w, np.float32), 1, 2), sizes),
               jnp.bfloat16)
  assert_close(dw, ref_tgmm(x, c, sizes), jnp.bfloat16)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_bfloat16_inputs_accumulate_in_float32(target):
  """bfloat16 in, float32 out: the float32 bound holds only with float32 accumulation."""
  x, w, sizes, c = _operands("several_tiles", jnp.bfloat16)
  tiles = (16, 128, 128) if target == "tpu" else SMALL_TILES[target]  # bf16: 16-row tiles
  y, _, _ = gmm_and_vjp(x, w, sizes, c, target=target, tiling=tiles, out_dtype=jnp.float32)
  assert y.dtype == jnp.float32
  assert_close(y, ref_gmm(x, w, sizes), jnp.float32)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_group_offset_computes_only_the_local_groups(target):
  """Expert parallelism: w holds groups 2..4 of 6; rows of groups 0, 1, 5 and past the groups
  are zeros in y and dx, dw covers the local groups only."""
  m, k, n = 45, 16, 24
  sizes = jnp.asarray([4, 7, 0, 12, 9, 6], jnp.int32)  # 38 rows; local: rows 11..31
  keys = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(keys[0], (m, k))
  w_local = jax.random.normal(keys[1], (3, k, n))
  c = jax.random.normal(keys[2], (m, n))
  y, dx, dw = gmm_and_vjp(x, w_local, sizes, c, target=target, offset=2)
  expected = ref_gmm(x, w_local, sizes, offset=2)
  assert np.all(expected[:11] == 0) and np.all(expected[32:] == 0)
  assert_close(y, expected, jnp.float32)
  assert_close(dx, ref_gmm(c, np.swapaxes(np.asarray(w_local), 1, 2), sizes, offset=2),
               jnp.float32)
  assert_close(dw, ref_tgmm(x, c, sizes, offset=2, num_local=3), jnp.float32)
  # The same through ragged_dot with zero weights for the non-local groups.
  w_full = jnp.zeros((6, k, n)).at[2:5].set(w_local)
  assert_close(y, np.asarray(ragged_dot_ref(x, w_full, sizes)), jnp.float32)


def test_group_offset_may_be_traced():
  """The offset of a device's experts comes from lax.axis_index under shard_map: traced."""
  x, w, sizes, _ = _operands("unaligned_rows_past_empty", jnp.float32)
  y = jax.jit(lambda off: gm.gmm(x, w[1:3], sizes, off, interpret=True))(jnp.int32(1))
  assert_close(y, ref_gmm(x, w[1:3], sizes, offset=1), jnp.float32)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_tgmm_directly(target):
  x, _, sizes, c = _operands("sixty_four_groups", jnp.float32)
  dw = jax.jit(lambda x, c: gm.tgmm(x, c, sizes, target=target, interpret=True))(x, c)
  assert dw.shape == (64, x.shape[1], c.shape[1])
  assert_close(dw, ref_tgmm(x, c, sizes), jnp.float32)
  assert np.all(np.asarray(dw)[np.asarray(sizes) == 0] == 0)


# --- schedules: every (row tile, group) pair that meets is visited once, in tile order ---

def _schedule_cases():
  rng = np.random.default_rng(0)
  cases = [([5, 0, 17, 3, 7], 40, 8, 0, 5), ([0, 0, 20, 0], 24, 8, 0, 4), ([19], 24, 8, 0, 1),
           ([4, 7, 0, 12, 9, 6], 48, 8, 2, 3), ([0, 0, 0], 16, 8, 0, 3), ([64], 64, 16, 0, 1)]
  for _ in range(8):
    g = int(rng.integers(1, 20))
    sizes = rng.multinomial(int(rng.integers(0, 90)), rng.dirichlet(np.full(g, 0.5)))
    tm = int(rng.choice([8, 16, 32]))
    rows = -(-max(int(sizes.sum()) + int(rng.integers(0, 20)), 1) // tm) * tm
    offset = int(rng.integers(0, g))
    cases.append((list(sizes), rows, tm, offset, int(rng.integers(1, g - offset + 1))))
  return cases


def _jit_schedule(make, **static):
  return jax.jit(lambda sizes, offset: make(sizes, offset, **static),
                 compiler_options={"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("sizes,rows,tm,offset,num_local", _schedule_cases())
def test_schedules_visit_every_meeting_pair_once(sizes, rows, tm, offset, num_local):
  sizes = np.asarray(sizes, np.int32)
  start, end = _bounds(sizes)
  meets = {(t, g - offset) for g in range(offset, offset + num_local) for t in range(rows // tm)
           if start[g] < end[g] and start[g] < (t + 1) * tm and end[g] > t * tm}
  args = dict(num_local=num_local, num_rows=rows, rows=rows, tm=tm)
  rs = [np.asarray(a) for a in _jit_schedule(sched.row_schedule, **args)(sizes, offset)]
  tile_I, group_I, start_I, end_I, flags_I = rs
  active = (flags_I & sched.ACTIVE) != 0
  assert sorted(zip(tile_I[active], group_I[active])) == sorted(meets)
  assert len(set(zip(tile_I[active], group_I[active]))) == active.sum()
  assert np.all(np.diff(tile_I) >= 0) and np.all(np.diff(group_I) >= 0)
  assert np.all(start_I[active] == start[group_I[active] + offset])
  # Each tile has exactly one FIRST step, before its other steps.
  first = (flags_I & sched.FIRST) != 0
  assert sorted(tile_I[first]) == list(range(rows // tm))
  gs = [np.asarray(a) for a in _jit_schedule(sched.group_schedule, **args)(sizes, offset)]
  tile_I, group_I, _, _, flags_I = gs
  active = (flags_I & sched.ACTIVE) != 0
  assert sorted(zip(tile_I[active], group_I[active])) == sorted(meets)
  for flag in (sched.FIRST, sched.LAST):  # one FIRST and one LAST step per local group
    assert sorted(group_I[(flags_I & flag) != 0]) == list(range(num_local))
  assert np.all(np.diff(group_I) >= 0)


# --- tilings and errors ---

SHAPES = [(m, k, n, g) for m in (1, 7, 100, 1000, 8192, 65536) for k in (8, 100, 128, 600, 2048)
          for n in (24, 384, 1024, 1000) for g in (1, 8, 128)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_chosen_tilings_obey_the_target_rules(target, dtype):
  for m, k, n, g in SHAPES:
    tiles = tiling.choose_tiling(m, k, n, g, dtype, target)
    assert tiling.check_tiling(tiles, m, k, n, dtype, target) == tiles
    m_p, k_p, n_p = tiling.padded_dims(m, k, n, tiles)
    assert m_p - m < tiles[0] and k_p - k < max(tiles[1], 128) and n_p - n < max(tiles[2], 128)
    if target == "tpu" and k % 128 == 0:
      assert k_p == k  # aligned dims are never padded on TPU


def test_no_rows_gives_empty_output_and_zero_weight_gradient():
  w, sizes = jnp.ones((2, 8, 16)), jnp.asarray([0, 0], jnp.int32)
  assert gm.gmm(jnp.ones((0, 8)), w, sizes, interpret=True).shape == (0, 16)
  dw = gm.tgmm(jnp.ones((0, 8)), jnp.ones((0, 16)), sizes, interpret=True)
  assert dw.shape == (2, 8, 16) and not np.any(np.asarray(dw))


def test_impossible_arguments_raise_value_errors_naming_them():
  x, w, sizes = jnp.ones((16, 8)), jnp.ones((2, 8, 128)), jnp.asarray([8, 8], jnp.int32)
  with pytest.raises(ValueError, match="tiling: tm=12 must be a multiple of 8"):
    gm.gmm(x, w, sizes, tiling=(12, 8, 128), interpret=True)
  with pytest.raises(ValueError, match="tiling: tm=8 must be a multiple of 16 for bfloat16"):
    gm.gmm(jnp.ones((256, 8), jnp.bfloat16), w.astype(jnp.bfloat16), sizes, tiling=(8, 8, 128))
  with pytest.raises(ValueError, match="tiling: tk=64 must be a multiple of 128"):
    gm.gmm(jnp.ones((256, 256)), jnp.ones((2, 256, 128)), sizes, tiling=(16, 64, 128))
  with pytest.raises(ValueError, match="tiling: tn=24 must be a power of two"):
    gm.gmm(x, w, sizes, tiling=(16, 16, 24), target="gpu", interpret=True)
  with pytest.raises(ValueError, match="x_MK .* disagree on k"):
    gm.gmm(jnp.ones((16, 9)), w, sizes)
  with pytest.raises(ValueError, match="w_GKN must be 3-D"):
    gm.gmm(x, jnp.ones((8, 128)), sizes)
  with pytest.raises(ValueError, match="group_sizes_G must be a 1-D integer"):
    gm.gmm(x, w, jnp.asarray([8.0, 8.0]))
  with pytest.raises(ValueError, match="w_GKN holds 3 groups"):
    gm.gmm(x, jnp.ones((3, 8, 128)), sizes)
  with pytest.raises(ValueError, match="group_offset=1 must be in"):
    gm.gmm(x, w, sizes, 1)
  with pytest.raises(ValueError, match="target='cpu'"):
    gm.gmm(x, w, sizes, target="cpu")
  with pytest.raises(ValueError, match="x_MK has dtype float16"):
    gm.gmm(x.astype(jnp.float16), w, sizes)
  with pytest.raises(ValueError, match="num_groups=3 must be in"):
    gm.tgmm(x, jnp.ones((16, 128)), sizes, num_groups=3)
  with pytest.raises(ValueError, match="equal rows"):
    gm.tgmm(x, jnp.ones((15, 128)), sizes)


@pytest.mark.slow
def test_agrees_with_megablox_on_the_rows_of_the_groups():
  """JAX's megablox TPU kernel (interpreted) as an independent reference: same values on the
  rows of the groups (megablox leaves rows past the groups undefined; ours are zeros)."""
  from jax.experimental.pallas.ops.tpu import megablox  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.key(7), 2)
  x = jax.random.normal(keys[0], (256, 128))
  w = jax.random.normal(keys[1], (5, 128, 256))
  sizes = jnp.asarray([40, 0, 100, 3, 60], jnp.int32)  # 203 of 256 rows
  theirs = jax.jit(lambda x, w: megablox.gmm(x, w, sizes, tiling=(64, 128, 128),
                                             interpret=True))(x, w)
  ours = jax.jit(lambda x, w: gm.gmm(x, w, sizes, interpret=True))(x, w)
  np.testing.assert_allclose(ours[:203], theirs[:203], rtol=1e-5, atol=1e-4)
  assert not np.any(np.asarray(ours[203:]))
