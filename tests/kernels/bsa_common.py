"""Shared cases and checks for the block-sparse attention tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bdiff import masks
from pallas_kernels.block_sparse_attention import api

# Fixed per-dtype tolerances against the f32 reference (never relaxed to make a test pass).
TOL = {
    jnp.float32: dict(atol=2e-5, rtol=2e-5),
    jnp.bfloat16: dict(atol=2e-2, rtol=2e-2),
}

# Static masks with prime or non-tile-multiple lengths; name -> mask.
MASKS = {
    "causal_offset": masks.causal(37, 101, q_offset=64),
    "full": masks.full(53, 97),
    "sliding_window": masks.sliding_window(97, 97, left=20, right=5),
    "block_causal_offset": masks.block_causal(47, 113, 8, q_offset=64),
    "bd3": masks.bd3_training(52, 4),
    "context_causal": masks.context_causal(48, 8),
    "and_causal_window": masks.causal(101) & masks.sliding_window(101, 101, left=16),
    # rows q >= 45 have no key: empty rows inside listed tiles and fully empty tile rows
    "empty_rows": masks.sliding_window(64, 40, left=5),
}


def qkv(key, b, lq, lk, h, hkv, d, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(key, 3)
  q = jax.random.normal(kq, (b, lq, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (b, lk, hkv, d), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (b, lk, hkv, d), jnp.float32).astype(dtype)
  return q, k, v


def run_with_grads(q, k, v, plan, backend, key, **kwargs):
  """(out, lse) and the vjp (dq, dk, dv) for random cotangents of out and the finite lse."""
  k1, k2 = jax.random.split(key)
  dout = jax.random.normal(k1, q.shape, jnp.float32).astype(q.dtype)
  dlse = jax.random.normal(k2, (q.shape[0], q.shape[2], q.shape[1]))

  @jax.jit
  def run(q, k, v, plan, dout, dlse):
    def f(q, k, v):
      return api.block_sparse_attention(q, k, v, plan, backend=backend, return_lse=True,
                                        **kwargs)
    (out, lse), vjp = jax.vjp(f, q, k, v)
    return out, lse, vjp((dout, jnp.where(jnp.isfinite(lse), dlse, 0.0)))

  return run(q, k, v, plan, dout, dlse)


def assert_close(actual, expected, dtype, what=""):
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                             err_msg=what, **TOL[dtype])
