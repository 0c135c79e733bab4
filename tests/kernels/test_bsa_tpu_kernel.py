"""The Mosaic TPU kernel (Pallas interpret mode on CPU) equals the plan reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call  # race report: private in 0.11.2
from jax.experimental.pallas import tpu as pltpu

from bdiff import masks
from pallas_kernels.block_sparse_attention import api
from pallas_kernels.block_sparse_attention import plan as plan_lib
from pallas_kernels.block_sparse_attention import tpu

from bsa_common import MASKS, assert_close, qkv, run_with_grads


def _compare(q, k, v, plan, dtype, key=jax.random.key(7), **kwargs):
  out, lse, grads = run_with_grads(q, k, v, plan, "tpu_interpret", key, **kwargs)
  q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
  out_r, lse_r, grads_r = run_with_grads(q32, k32, v32, plan, "reference", key, **kwargs)
  assert out.dtype == q.dtype and lse.dtype == jnp.float32
  assert_close(out, out_r, dtype, "out")
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_r), "empty rows")
  finite = lambda x: jnp.where(jnp.isfinite(x), x, 0.0)
  assert_close(finite(lse), finite(lse_r), dtype, "lse")
  for g, g_r, what in zip(grads, grads_r, "qkv"):
    assert g.dtype == dtype and np.all(np.isfinite(np.asarray(g, np.float32))), what
    assert_close(g, g_r, dtype, "d" + what)
  return out, lse, grads


# (mask, tiles, batch, heads, kv_heads, head_dim): prime lengths, GQA, MQA, MHA.
CASES = {
    "causal_offset": ((16, 32), 1, 4, 2, 32),
    "full": ((32, 32), 2, 2, 1, 32),
    "sliding_window": ((32, 16), 1, 2, 2, 64),
    "block_causal_offset": ((16, 32), 1, 4, 1, 32),
    "bd3": ((32, 32), 2, 2, 2, 32),
    "context_causal": ((32, 32), 1, 4, 2, 32),
    "and_causal_window": ((32, 32), 1, 2, 1, 32),
    "empty_rows": ((16, 16), 1, 2, 1, 32),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference_f32(name):
  mask = MASKS[name]
  (bq, bk), b, h, hkv, d = CASES[name]
  plan = api.plan_for_mask(mask, block_q=bq, block_k=bk)
  q, k, v = qkv(jax.random.key(len(name)), b, mask.q_len, mask.kv_len, h, hkv, d)
  _compare(q, k, v, plan, jnp.float32)


@pytest.mark.parametrize("tiles", [(8, 24), (24, 136)])
def test_kernel_matches_reference_at_tiles_that_are_no_power_of_two(tiles):
  """Tiles the TPU kernel lowers at (any multiple of 8), with segment ids, in interpret mode."""
  mask = MASKS["sliding_window"]
  plan = api.plan_for_mask(mask, block_q=tiles[0], block_k=tiles[1])
  q, k, v = qkv(jax.random.key(9), 1, mask.q_len, mask.kv_len, 2, 1, 32)
  rng = np.random.default_rng(1)
  seg = tuple(jnp.asarray(rng.integers(0, 2, (1, n)), jnp.int32) for n in mask.shape)
  _compare(q, k, v, plan, jnp.float32, segment_ids=seg)


@pytest.mark.parametrize("name", ["bd3", "causal_offset"])
def test_kernel_matches_reference_bf16(name):
  mask = MASKS[name]
  (bq, bk), b, h, hkv, d = CASES[name]
  plan = api.plan_for_mask(mask, block_q=bq, block_k=bk)
  q, k, v = qkv(jax.random.key(3), b, mask.q_len, mask.kv_len, h, hkv, d, jnp.bfloat16)
  _compare(q, k, v, plan, jnp.bfloat16)


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_reference_on_random_shapes(seed):
  rng = np.random.default_rng(seed)
  primes = [17, 23, 31, 47, 61, 67, 89, 97, 113, 131]
  lq, lk = (int(x) for x in rng.choice(primes, 2))
  offset = int(rng.integers(0, 40))
  mask = [masks.causal(lq, lk, q_offset=max(offset, lk - lq)),
          masks.sliding_window(lq, lk, left=int(rng.integers(1, 30)), q_offset=offset),
          masks.block_causal(lq, lk, int(rng.choice([1, 4, 16])), q_offset=offset),
          masks.full(lq, lk)][int(rng.integers(0, 4))]
  bq, bk = (int(x) for x in rng.choice([16, 32], 2))
  h, hkv = [(2, 1), (4, 2), (3, 3)][int(rng.integers(0, 3))]
  plan = api.plan_for_mask(mask, block_q=bq, block_k=bk)
  q, k, v = qkv(jax.random.key(seed), 1, lq, lk, h, hkv, int(rng.choice([32, 64])))
  _compare(q, k, v, plan, jnp.float32)


def test_empty_rows_give_zero_output_and_finite_zero_gradients():
  mask = MASKS["empty_rows"]  # rows q >= 45 see no key
  plan = api.plan_for_mask(mask, block_q=16, block_k=16)
  q, k, v = qkv(jax.random.key(5), 1, mask.q_len, mask.kv_len, 2, 1, 32)
  out, lse, (dq, _, _) = _compare(q, k, v, plan, jnp.float32)
  empty = ~mask.dense().any(axis=1)
  assert empty[45:].all() and not empty[:45].any()
  assert np.all(np.asarray(out)[:, empty] == 0)
  assert np.all(np.isneginf(np.asarray(lse)[:, :, empty]))
  assert np.all(np.asarray(dq)[:, empty] == 0)


@pytest.mark.parametrize("plan_heads", ["q_heads", "kv_heads"])
def test_kernel_matches_reference_on_dynamic_topk_plans(plan_heads):
  mask = MASKS["bd3"]
  b, h, hkv, d, bq, bk = 2, 4, 2, 32, 16, 16
  kind = plan_lib.tile_kinds(mask, bq, bk)
  hp = h if plan_heads == "q_heads" else hkv
  scores = jax.random.uniform(jax.random.key(11), (b, hp) + kind.shape)
  plan = plan_lib.plan_from_scores(scores, mask, k=3, block_q=bq, block_k=bk,
                                   forced=plan_lib.diagonal_tiles(mask, bq, bk))
  q, k, v = qkv(jax.random.key(12), b, mask.q_len, mask.kv_len, h, hkv, d)
  _compare(q, k, v, plan, jnp.float32)


def test_kernel_rebuilds_static_plan_at_other_block_sizes():
  mask = MASKS["context_causal"]
  plan = api.plan_for_mask(mask, block_q=16, block_k=16)
  q, k, v = qkv(jax.random.key(13), 1, mask.q_len, mask.kv_len, 2, 2, 32)
  _compare(q, k, v, plan, jnp.float32, block_sizes=api.BlockSizes(block_q=32, block_k=64))


@pytest.mark.parametrize("segments", [False, True])
def test_kernel_under_tpu_interpret_params_has_no_races_or_uninitialised_reads(segments):
  """The memory-simulating interpreter: uninitialised memory reads as NaN, races detected,
  out-of-bounds tile loads (segment tiles of padded lengths included) raise."""
  mask = MASKS["block_causal_offset"]
  plan = api.plan_for_mask(mask, block_q=16, block_k=32)
  q, k, v = qkv(jax.random.key(14), 1, mask.q_len, mask.kv_len, 2, 1, 32)
  seg = None
  if segments:
    rng = np.random.default_rng(0)
    seg = tuple(jnp.asarray(rng.integers(0, 2, (1, n)), jnp.int32) for n in mask.shape)
  hm = lambda x: x.transpose(0, 2, 1, 3)
  params = pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan",
                                 out_of_bounds_reads="raise")
  out, lse = tpu.forward(hm(q), hm(k), hm(v), plan, scale=0.3, segment_ids=seg,
                         interpret=params)
  dout = jax.random.normal(jax.random.key(15), out.shape)
  grads = tpu.backward(hm(q), hm(k), hm(v), out, lse, dout, jnp.zeros_like(lse), plan,
                       scale=0.3, segment_ids=seg, interpret=params)
  assert not interpret_pallas_call.races.races_found
  out_r, lse_r = api.block_sparse_attention(q, k, v, plan, scale=0.3, backend="reference",
                                            segment_ids=seg, return_lse=True)
  assert_close(hm(out), out_r, jnp.float32, "out")
  finite = lambda x: jnp.where(jnp.isfinite(x), x, 0.0)  # segments may empty a row
  assert_close(finite(lse), finite(lse_r), jnp.float32, "lse")
  for g in grads:
    assert np.all(np.isfinite(g))
