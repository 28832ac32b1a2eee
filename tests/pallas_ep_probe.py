"""Run by test_pallas_dispatch.py in a subprocess with 2 fake CPU devices (XLA_FLAGS set by the
test): expert parallelism with the Pallas grouped matmul.

Each device holds half of the experts' weights and runs gmm (interpreted) with
``group_offset = axis_index * experts per device`` on all rows; rows of the other device's
experts come out as zeros, so the sum over devices is the full grouped matmul. Prints one JSON
line with the largest differences to the single-device gmm, in the value and the gradients.
``check_vma=False``: the Pallas interpreter cannot yet type the index maps of a kernel whose
scalar-prefetched schedule varies over a mesh axis ("dynamic_slice requires varying manual axes
to match", jax 0.10.2); the real kernels lower with the default ``check_vma=True``
(tests/test_pallas_lowering.py).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kernels_pallas import grouped_matmul as gm

M, K, N, G = 50, 16, 24, 6


def main():
  mesh = jax.make_mesh((2,), ("expert",))
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (M, K))
  w = jax.random.normal(keys[1], (G, K, N))
  c = jax.random.normal(keys[2], (M, N))
  sizes = jnp.asarray([7, 0, 12, 9, 3, 11], jnp.int32)  # 42 of the 50 rows

  def local(x, w_local, sizes):
    offset = jax.lax.axis_index("expert") * w_local.shape[0]
    return jax.lax.psum(gm.gmm(x, w_local, sizes, offset, interpret=True), "expert")

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("expert"), P()), out_specs=P(),
                          check_vma=False)
  w_sharded = jax.device_put(w, NamedSharding(mesh, P("expert")))
  loss = lambda f: (lambda x, w: jnp.sum(f(x, w) * c))
  ep = jax.jit(jax.value_and_grad(loss(lambda x, w: sharded(x, w, sizes)), argnums=(0, 1)))
  one = jax.jit(jax.value_and_grad(loss(lambda x, w: gm.gmm(x, w, sizes, interpret=True)),
                                   argnums=(0, 1)))
  (v_ep, (dx_ep, dw_ep)), (v_one, (dx_one, dw_one)) = ep(x, w_sharded), one(x, w)
  y_ep = jax.jit(lambda x, w: sharded(x, w, sizes))(x, w_sharded)
  y_one = gm.gmm(x, w, sizes, interpret=True)
  diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
  print(json.dumps({"devices": jax.device_count(), "y": diff(y_ep, y_one),
                    "loss": diff(v_ep, v_one), "dx": diff(dx_ep, dx_one),
                    "dw": diff(dw_ep, dw_one), "dw_spec": list(dw_ep.sharding.spec)}))


if __name__ == "__main__":
  main()
