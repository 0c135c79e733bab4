"""The Mosaic TPU kernel lowers for TPU (forward and backward) at every tile size it accepts.

Interpret mode proves what the kernel computes, not that Mosaic accepts it. These tests run on
a CPU host:

* ``test_kernel_lowers_for_tpu_*`` lower forward and backward for TPU under an abstract TPU
  mesh (``jax.jit(f).trace(...).lower(lowering_platforms=("tpu",))``). That runs the Pallas
  TPU lowering with its block-shape rules (the last two block dims divisible by 8 and 128, or
  equal to the array's) and emits the Mosaic module; it does not run the Mosaic compiler.
* ``test_kernel_compiles_for_tpu_without_a_tpu`` also compiles the result with the Mosaic
  compiler of libtpu, deviceless (ahead-of-time for a TPU topology, as MaxText's
  ``train_compile.py`` does). It runs only where libtpu is available (``TPU_LIBRARY_PATH`` or
  an installed ``libtpu`` package) and is skipped elsewhere.
"""
import contextlib
import itertools
import os

import jax
import jax.numpy as jnp
import pytest

from bdiff import masks
from pallas_kernels.block_sparse_attention import api
from pallas_kernels.block_sparse_attention import plan as plan_lib

# Tile sizes the API accepts are the positive multiples of 8: the small ones, ones that are not
# a power of two, and multiples of 128. T is no multiple of most of them (padding is lowered).
TILES = (8, 16, 24, 32, 64, 128, 136, 256)
BLOCK_K = (8, 24, 128, 136)
T = 264
TPU_KIND = "TPU v5 lite"


def _abstract_tpu_mesh():
  device = jax.sharding.AbstractDevice(device_kind=TPU_KIND, num_cores=1, platform="tpu")
  return jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)


def _functions(plan, segments: bool):
  """(forward, backward) of the kernel at ``plan``'s tiles, on [1, T, 4, 64] GQA inputs."""
  def forward(q, k, v, seg):
    return api.block_sparse_attention(q, k, v, plan, backend="tpu", return_lse=True,
                                      segment_ids=(seg, seg) if segments else None)

  def backward(q, k, v, seg):
    def loss(q, k, v):
      out, lse = forward(q, k, v, seg)
      return jnp.sum(out.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return forward, backward


def _args(dtype, sharding=None):
  q = jax.ShapeDtypeStruct((1, T, 4, 64), dtype, sharding=sharding)
  kv = jax.ShapeDtypeStruct((1, T, 2, 64), dtype, sharding=sharding)
  seg = jax.ShapeDtypeStruct((1, T), jnp.int32, sharding=sharding)
  return q, kv, kv, seg


def _lower_for_tpu(fn, args):
  with jax.sharding.use_abstract_mesh(_abstract_tpu_mesh()):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",))


def _assert_mosaic_calls(lowered, count: int):
  text = lowered.as_text()
  assert text.count("tpu_custom_call") >= count, "no Mosaic kernel in the lowered module"


@pytest.mark.parametrize("block_q", TILES)
def test_kernel_lowers_for_tpu_at_every_tile_size(block_q):
  """Forward and backward with segment ids (their specs are a superset of those without), f32.

  block_k only matters through its divisibility by 8 and 128, so four values cover it.
  """
  mask = masks.bd3_training(T // 2, 4)
  for block_k in BLOCK_K:
    plan = api.plan_for_mask(mask, block_q=block_q, block_k=block_k)
    forward, backward = _functions(plan, segments=True)
    _assert_mosaic_calls(_lower_for_tpu(forward, _args(jnp.float32)), 1)
    _assert_mosaic_calls(_lower_for_tpu(backward, _args(jnp.float32)), 3)


@pytest.mark.parametrize("tiles", [(8, 8), (16, 128), (32, 32), (64, 128), (136, 24)])
def test_kernel_lowers_for_tpu_in_bf16_and_on_dynamic_plans(tiles):
  block_q, block_k = tiles
  mask = masks.causal(T)
  _, backward = _functions(api.plan_for_mask(mask, block_q=block_q, block_k=block_k),
                           segments=True)
  _assert_mosaic_calls(_lower_for_tpu(backward, _args(jnp.bfloat16)), 3)

  kind = plan_lib.tile_kinds(mask, block_q, block_k)
  top_k = min(2, kind.shape[1])

  def dynamic(scores, q, k, v, seg):
    plan = plan_lib.plan_from_scores(scores, mask, k=top_k, block_q=block_q, block_k=block_k)
    return _functions(plan, segments=True)[1](q, k, v, seg)

  scores = jax.ShapeDtypeStruct((1, 2) + kind.shape, jnp.float32)
  _assert_mosaic_calls(_lower_for_tpu(dynamic, (scores,) + _args(jnp.float32)), 3)


def test_tiles_that_are_not_multiples_of_8_are_rejected_for_tpu():
  mask = masks.causal(T)
  q, k, v = (jnp.zeros(a.shape, a.dtype) for a in _args(jnp.float32)[:3])
  for bad in ((12, 16), (16, 4)):
    with pytest.raises(ValueError, match=r"TPU tiles \(block_q, block_k\) must be multiples "
                                         r"of 8"):
      api.block_sparse_attention(q, k, v, api.plan_for_mask(mask, block_q=bad[0],
                                                            block_k=bad[1]), backend="tpu")


def _libtpu_path():
  path = os.environ.get("TPU_LIBRARY_PATH")
  if path and os.path.isfile(path):
    return path
  try:
    import libtpu  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return libtpu.get_library_path()


@contextlib.contextmanager
def _tpu_topology():
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"libtpu cannot describe a TPU topology here: {e}")
  mesh = jax.sharding.Mesh(topology.devices[:1], ("x",))
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    yield jax.sharding.SingleDeviceSharding(topology.devices[0])


@pytest.mark.skipif(_libtpu_path() is None, reason="needs libtpu (TPU_LIBRARY_PATH or the "
                    "libtpu package) to run the Mosaic compiler without a TPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_compiles_for_tpu_without_a_tpu(dtype):
  """Deviceless ahead-of-time compile through libtpu: Mosaic accepts every tile size."""
  mask = masks.bd3_training(T // 2, 4)
  with _tpu_topology() as sharding:
    for block_q, block_k in itertools.product(TILES, BLOCK_K):
      plan = api.plan_for_mask(mask, block_q=block_q, block_k=block_k)
      for fn in _functions(plan, segments=True):
        jax.jit(fn).trace(*_args(dtype, sharding)).lower().compile()
