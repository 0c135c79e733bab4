"""Segment ids: kernel (interpret mode) == plan reference == dense XLA attention, fwd and bwd."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import attention, masks
from pallas_kernels.block_sparse_attention import api

from bsa_common import assert_close, qkv, run_with_grads

NO_KEY_SEGMENT = 9  # a query segment that no key has: its row is empty

# name -> (mask, tiles, batch, heads, kv_heads, head_dim); lengths are not tile multiples.
CASES = {
    "causal": (masks.causal(37, 53, q_offset=16), (16, 16), 2, 4, 2, 32),
    "bd3": (masks.bd3_training(20, 4), (16, 16), 2, 2, 1, 32),
    "full": (masks.full(29, 41), (16, 32), 2, 2, 2, 32),
    "cache_window": (masks.cache_window(8, 24, 4), (8, 16), 2, 2, 1, 32),
}


def _segments(seed, b, lq, lk):
  """Random segments in {0, 1, 2}, plus a few queries of a segment no key has."""
  rng = np.random.default_rng(seed)
  q_seg = rng.integers(0, 3, (b, lq)).astype(np.int32)
  q_seg[:, rng.choice(lq, 3, replace=False)] = NO_KEY_SEGMENT
  return jnp.asarray(q_seg), jnp.asarray(rng.integers(0, 3, (b, lk)), jnp.int32)


def _xla_with_grads(q, k, v, mask, segment_ids, key):
  """As ``run_with_grads``, for ``bdiff.attention.xla_attention``."""
  k1, k2 = jax.random.split(key)
  dout = jax.random.normal(k1, q.shape, jnp.float32).astype(q.dtype)
  dlse = jax.random.normal(k2, (q.shape[0], q.shape[2], q.shape[1]))

  @jax.jit
  def run(q, k, v, dout, dlse):
    with jax.default_matmul_precision("highest"):
      f = lambda q, k, v: attention.xla_attention(q, k, v, mask, segment_ids=segment_ids,
                                                  return_lse=True)
      (out, lse), vjp = jax.vjp(f, q, k, v)
      return out, lse, vjp((dout, jnp.where(jnp.isfinite(lse), dlse, 0.0)))

  return run(q, k, v, dout, dlse)


def _assert_same(actual, expected, what):
  (out, lse, grads), (out_e, lse_e, grads_e) = actual, expected
  assert_close(out, out_e, jnp.float32, f"{what}: out")
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_e), f"{what}: empty rows")
  finite = lambda x: jnp.where(jnp.isfinite(x), x, 0.0)  # noqa: E731
  assert_close(finite(lse), finite(lse_e), jnp.float32, f"{what}: lse")
  for g, g_e, name in zip(grads, grads_e, "qkv"):
    assert np.all(np.isfinite(g)), f"{what}: d{name}"
    assert_close(g, g_e, jnp.float32, f"{what}: d{name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_reference_equals_xla_with_segments(name):
  mask, (bq, bk), b, h, hkv, d = CASES[name]
  plan = api.plan_for_mask(mask, block_q=bq, block_k=bk)
  q, k, v = qkv(jax.random.key(len(name)), b, mask.q_len, mask.kv_len, h, hkv, d)
  seg = _segments(len(name), b, mask.q_len, mask.kv_len)
  key = jax.random.key(3)
  kernel = run_with_grads(q, k, v, plan, "tpu_interpret", key, segment_ids=seg)
  with jax.default_matmul_precision("highest"):
    ref = run_with_grads(q, k, v, plan, "reference", key, segment_ids=seg)
  _assert_same(kernel, ref, "kernel vs reference")
  _assert_same(ref, _xla_with_grads(q, k, v, mask, seg, key), "reference vs xla")
  out, lse, (dq, _, _) = kernel
  empty = np.asarray(seg[0]) == NO_KEY_SEGMENT  # [b, q]
  assert np.all(np.asarray(out)[empty] == 0) and np.all(np.asarray(dq)[empty] == 0)
  assert np.all(np.isneginf(np.asarray(lse).transpose(0, 2, 1)[empty]))


def test_sampler_validity_segments_through_attend():
  """The sampler's use: a static cache-window mask, per-row cache validity as segments."""
  width, cache, blk = 4, 12, 4
  mask = masks.cache_window(width, cache, blk)
  q, k, v = qkv(jax.random.key(4), 3, width, cache + width, 2, 1, 16)
  start = jnp.array([0, 4, 12])  # per-row valid cache prefix
  key_pos = jnp.arange(cache + width)[None]
  kv_seg = ((key_pos < start[:, None]) | (key_pos >= cache)).astype(jnp.int32)
  seg = (jnp.ones((3, width), jnp.int32), kv_seg)
  with jax.default_matmul_precision("highest"):
    out = attention.attend(q, k, v, mask, impl="pallas", segment_ids=seg,
                           backend="tpu_interpret")
    explicit = mask.dense()[None] & (kv_seg[:, None, :] == 1)
    out_x = attention.attend(q, k, v, explicit, impl="xla")
  assert_close(out, out_x, jnp.float32, "out")


def test_segment_ids_are_validated():
  mask = masks.causal(16)
  plan = api.plan_for_mask(mask, block_q=8, block_k=8)
  q, k, v = qkv(jax.random.key(0), 2, 16, 16, 2, 1, 16)
  ok = jnp.zeros((2, 16), jnp.int32)
  bsa = lambda seg: api.block_sparse_attention(q, k, v, plan, segment_ids=seg)  # noqa: E731
  with pytest.raises(TypeError, match="segment_ids must be a pair"):
    bsa(ok)
  with pytest.raises(ValueError, match=r"segment_ids\[kv\] must have shape"):
    bsa((ok, ok[:, :15]))
  with pytest.raises(ValueError, match=r"segment_ids\[q\] must be integers"):
    bsa((ok.astype(jnp.float32), ok))
