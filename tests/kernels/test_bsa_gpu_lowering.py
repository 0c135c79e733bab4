"""The Mosaic GPU kernel lowers for CUDA at production shapes (T = 8192, D = 128), from a
CPU host: ``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` runs the whole
Mosaic GPU lowering (layouts, wgmma shapes, TMA transforms, barriers) without a GPU. It does
not run ptxas nor measure anything; that needs a Hopper GPU."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from bdiff import masks
from pallas_kernels.block_sparse_attention import api, gpu
from pallas_kernels.block_sparse_attention import plan as plan_lib

T, D, TILE = 8192, 128, 128

MASKS = {
    "block_causal_16": masks.block_causal(T, T, 16),
    "block_causal_64_offset": masks.block_causal(T - 1024, T, 64, q_offset=1024),
    "bd3_two_stream": masks.bd3_training(T // 2, 16),
    "causal": masks.causal(T),
    "sliding_window": masks.sliding_window(T, T, left=1024),
}


def _spec(*shape, dtype=jnp.bfloat16):
  return jax.ShapeDtypeStruct(shape, dtype)


def _mosaic_calls(lowered) -> list[str]:
  return re.findall(r"custom_call @(mosaic_gpu\w*)", lowered.as_text())


def _lower_forward(mask, *, segments=False, block_k=TILE, head_dim=D, **kwargs):
  plan = plan_lib.plan_for_mask(mask, block_q=TILE, block_k=block_k)
  q = _spec(1, 4, mask.q_len, head_dim)
  kv = _spec(1, 2, mask.kv_len, head_dim)
  segs = (_spec(1, mask.q_len, dtype=jnp.int32),
          _spec(1, mask.kv_len, dtype=jnp.int32)) if segments else None

  def f(q, k, v, plan, segs):
    return gpu.forward(q, k, v, plan, scale=head_dim ** -0.5, segment_ids=segs, **kwargs)

  return jax.jit(f).trace(q, kv, kv, plan, segs).lower(lowering_platforms=("cuda",))


def _lower_backward(mask, *, segments=False, head_dim=D):
  plan = plan_lib.plan_for_mask(mask, block_q=TILE, block_k=TILE)
  q = _spec(1, 4, mask.q_len, head_dim)
  kv = _spec(1, 2, mask.kv_len, head_dim)
  lse = _spec(1, 4, mask.q_len, dtype=jnp.float32)
  segs = (_spec(1, mask.q_len, dtype=jnp.int32),
          _spec(1, mask.kv_len, dtype=jnp.int32)) if segments else None

  def f(q, k, v, out, lse, dout, dlse, plan, segs):
    return gpu.backward(q, k, v, out, lse, dout, dlse, plan, scale=head_dim ** -0.5,
                        segment_ids=segs)

  return jax.jit(f).trace(q, kv, kv, q, lse, q, lse, plan, segs).lower(
      lowering_platforms=("cuda",))


@pytest.mark.parametrize("name", MASKS)
def test_forward_lowers_for_cuda(name):
  assert _mosaic_calls(_lower_forward(MASKS[name])) == ["mosaic_gpu_v2"]


@pytest.mark.parametrize("name", MASKS)
def test_backward_lowers_for_cuda(name):
  # Two kernels: dQ over the forward lists, dK/dV over the transposed lists.
  assert _mosaic_calls(_lower_backward(MASKS[name])) == ["mosaic_gpu_v2"] * 2


def test_head_dim_64_lowers_for_cuda():
  mask = MASKS["bd3_two_stream"]
  assert _mosaic_calls(_lower_forward(mask, head_dim=64)) == ["mosaic_gpu_v2"]
  assert _mosaic_calls(_lower_backward(mask, head_dim=64)) == ["mosaic_gpu_v2"] * 2


def test_backward_with_segments_lowers_for_cuda():
  lowered = _lower_backward(MASKS["bd3_two_stream"], segments=True)
  assert _mosaic_calls(lowered) == ["mosaic_gpu_v2"] * 2


def test_forward_with_segments_and_smem_p_lowers_for_cuda():
  # The interpreter's variant (P staged through shared memory) is valid GPU code too.
  lowered = _lower_forward(MASKS["block_causal_16"], segments=True, p_in_smem=True)
  assert _mosaic_calls(lowered) == ["mosaic_gpu_v2"]


def test_three_stage_ring_with_64_key_tiles_lowers_for_cuda():
  # Q (32 KiB) + 3 x (K + V) of 64-key tiles (96 KiB) fit an H100 CTA's shared memory; with
  # 128-key tiles three stages do not (by a few hundred bytes at D = 128).
  lowered = _lower_forward(MASKS["bd3_two_stream"], block_k=64, stages=3)
  assert _mosaic_calls(lowered) == ["mosaic_gpu_v2"]


def test_top_k_plan_forward_lowers_for_cuda():
  mask, nt = masks.causal(T), T // TILE

  def f(q, k, v, scores):
    plan = plan_lib.plan_from_scores(scores, mask, k=16, block_q=TILE, block_k=TILE,
                                     forced=plan_lib.diagonal_tiles(mask, TILE, TILE))
    return gpu.forward(q, k, v, plan, scale=D ** -0.5)

  q = _spec(1, 4, T, D, dtype=jnp.float16)
  kv = _spec(1, 2, T, D, dtype=jnp.float16)
  scores = _spec(1, 4, nt, nt, dtype=jnp.float32)
  lowered = jax.jit(f).trace(q, kv, kv, scores).lower(lowering_platforms=("cuda",))
  assert _mosaic_calls(lowered) == ["mosaic_gpu_v2"]


def test_top_k_plan_forward_and_backward_through_the_api_lower_for_cuda():
  # backend="gpu" through the api's custom_vjp: three Mosaic GPU kernels (forward, dQ, dK/dV)
  # on a runtime top-k plan, whose transposed lists have room for every query tile.
  mask, nt = masks.causal(T), T // TILE

  def f(q, k, v, scores, dout):
    plan = plan_lib.plan_from_scores(scores, mask, k=16, block_q=TILE, block_k=TILE,
                                     forced=plan_lib.diagonal_tiles(mask, TILE, TILE))
    attend = lambda q, k, v: api.block_sparse_attention(q, k, v, plan, backend="gpu")
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(dout)

  q = _spec(1, T, 4, D)
  kv = _spec(1, T, 2, D)
  scores = _spec(1, 4, nt, nt, dtype=jnp.float32)
  lowered = jax.jit(f).trace(q, kv, kv, scores, q).lower(lowering_platforms=("cuda",))
  assert _mosaic_calls(lowered) == ["mosaic_gpu_v2"] * 3
