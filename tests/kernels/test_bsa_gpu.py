"""The Mosaic GPU kernel (gpu.py) run on CPU by the Mosaic GPU interpreter, against the
pure-JAX reference, for every mask type, GQA, lengths that are not tile multiples, segment
ids, runtime top-k plans, empty rows, f16 and bf16. Shapes are tiny: the interpreter
simulates every warpgroup, barrier and TMA copy of every CTA."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call as gpu_interpret
from jax.experimental.pallas import mosaic_gpu as plgpu

from bdiff import masks
from pallas_kernels.block_sparse_attention import gpu, reference
from pallas_kernels.block_sparse_attention import plan as plan_lib
from tests.kernels import bsa_common

# Fixed per-dtype tolerances against the f32 reference on the same (rounded) inputs; the
# kernel rounds P to the input dtype before the PV matmul, as FlashAttention does.
TOL = {jnp.bfloat16: dict(atol=2e-2, rtol=2e-2), jnp.float16: dict(atol=2e-3, rtol=2e-3)}
LSE_TOL = dict(atol=2e-5, rtol=2e-5)  # f32 statistics of the same f32 scores


@pytest.fixture(autouse=True)
def _reset_interpreter():
  """The interpreter keeps global state that an exception leaves inconsistent."""
  yield
  gpu_interpret.reset_gpu_interpret_mode_state()


def _heads_major(x):
  return x.transpose(0, 2, 1, 3)


def check_forward(plan, *, heads=2, kv_heads=1, head_dim=64, dtype=jnp.float16,
                  segment_ids=None, interpret=None, seed=0, **kwargs):
  """Runs the interpreted kernel and asserts it equals the reference; returns the LSE."""
  q, k, v = bsa_common.qkv(jax.random.key(seed), 1 if segment_ids is None else
                           segment_ids[0].shape[0], plan.q_len, plan.kv_len, heads, kv_heads,
                           head_dim, dtype)
  scale = head_dim ** -0.5
  out, lse = gpu.forward(*map(_heads_major, (q, k, v)), plan, scale=scale,
                         segment_ids=segment_ids,
                         interpret=interpret or plgpu.InterpretGPUParams(), **kwargs)
  ref_out, ref_lse = reference.attention(q, k, v, plan, scale=scale, segment_ids=segment_ids)
  np.testing.assert_allclose(np.asarray(_heads_major(out), np.float32),
                             np.asarray(ref_out, np.float32), err_msg="out", **TOL[dtype])
  lse, ref_lse = np.asarray(lse), np.asarray(ref_lse)
  np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(ref_lse), err_msg="empty rows")
  finite = np.isfinite(ref_lse)
  np.testing.assert_allclose(lse[finite], ref_lse[finite], err_msg="lse", **LSE_TOL)
  return lse


def test_block_causal_offset_gqa_two_compute_warpgroups():
  # 100 queries against a 64-token cache + themselves: neither length is a tile multiple;
  # block_q = 128 runs two compute warpgroups sharing one plan row (schedule barrier on).
  mask = masks.block_causal(100, 164, 8, q_offset=64)
  check_forward(plan_lib.plan_for_mask(mask, block_q=128, block_k=64), heads=4, kv_heads=2)


def test_bd3_two_stream_bf16_head_dim_128():
  mask = masks.bd3_training(96, 16)  # [x_t ; x_0], 192 tokens, diagonal tiles partial
  check_forward(plan_lib.plan_for_mask(mask, block_q=128, block_k=64), head_dim=128,
                dtype=jnp.bfloat16)


def test_causal_and_window_three_stage_ring():
  mask = masks.causal(200) & masks.sliding_window(200, 200, left=70)
  check_forward(plan_lib.plan_for_mask(mask, block_q=64, block_k=64), stages=3)


def test_empty_rows_give_zero_and_minus_inf():
  # Rows q >= 45 see no key: some inside listed tiles, and a whole tile row that lists none.
  mask = masks.sliding_window(130, 40, left=5)
  plan = plan_lib.plan_for_mask(mask, block_q=64, block_k=64)
  assert int(np.asarray(plan.kv_count).min()) == 0
  lse = check_forward(plan)
  assert np.isneginf(lse[..., 45:]).all() and np.isfinite(lse[..., :45]).all()


def test_segment_ids_bf16():
  mask = masks.block_causal(100, 164, 8, q_offset=64)
  rng = np.random.default_rng(0)
  q_seg = np.sort(rng.integers(0, 3, (2, 100)), axis=1)
  kv_seg = np.sort(rng.integers(0, 3, (2, 164)), axis=1)
  check_forward(plan_lib.plan_for_mask(mask, block_q=128, block_k=64), dtype=jnp.bfloat16,
                segment_ids=(jnp.asarray(q_seg), jnp.asarray(kv_seg)))


def test_runtime_top_k_per_head_plan():
  mask = masks.causal(192)
  nq = nk = 3
  scores = jax.random.uniform(jax.random.key(1), (1, 2, nq, nk))
  plan = plan_lib.plan_from_scores(scores, mask, k=2, block_q=64, block_k=64,
                                   forced=plan_lib.diagonal_tiles(mask, 64, 64))
  assert plan.group_shape == (1, 2) and plan.dynamic
  check_forward(plan)


def test_full_flag_skips_the_predicate():
  # A plan whose diagonal tiles are flagged FULL means "attend the whole tile": the kernel
  # must not apply the causal predicate there (it is applied on partial tiles only).
  plan = plan_lib.plan_for_mask(masks.causal(128), block_q=64, block_k=64)
  full = np.ones_like(np.asarray(plan.kv_full))
  plan = dataclasses.replace(plan, kv_full=full)
  dense = np.asarray(reference.dense_mask(plan))[0, 0]
  assert dense[:64, :64].all() and not dense[:64, 64:].any()
  check_forward(plan, heads=1)


def test_no_races_in_the_pipeline():
  mask = masks.block_causal(128, 192, 16)
  check_forward(plan_lib.plan_for_mask(mask, block_q=128, block_k=64), heads=1,
                interpret=plgpu.InterpretGPUParams(detect_races=True))
  assert not gpu_interpret.get_races().races_found


@pytest.mark.parametrize("bad, message", [
    (dict(dtype=jnp.float32), "bfloat16 or float16"),
    (dict(head_dim=96), "head_dim"),
    (dict(block_q=32), "block_q"),
    (dict(block_k=96), "block_k"),
])
def test_unsupported_inputs_raise(bad, message):
  args = dict(dtype=jnp.float16, head_dim=64, block_q=64, block_k=64) | bad
  plan = plan_lib.plan_for_mask(masks.causal(128), block_q=args["block_q"],
                                block_k=args["block_k"])
  q = jnp.zeros((1, 1, 128, args["head_dim"]), args["dtype"])
  with pytest.raises(ValueError, match=message):
    gpu.forward(q, q, q, plan, scale=1.0, interpret=plgpu.InterpretGPUParams())
