"""attend(): the XLA reference against a naive per-head softmax, GQA, masks, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import attention, masks


def naive(q, k, v, allowed):
  b, lq, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for bi in range(b):
    for hi in range(h):
      s = q[bi, :, hi].astype(np.float64) @ k[bi, :, hi // g].T.astype(np.float64) / np.sqrt(d)
      s = np.where(allowed[bi], s, -np.inf)
      for qi in range(lq):
        if np.isfinite(s[qi]).any():
          p = np.exp(s[qi] - s[qi].max())
          out[bi, qi, hi] = (p / p.sum()) @ v[bi, :, hi // g]
  return out


@pytest.mark.parametrize("mask", [masks.bd3_training(6, 2), masks.block_causal(5, 11, 3, 6),
                                  masks.causal(7, 7), masks.full(4, 9)],
                         ids=lambda m: type(m).__name__)
def test_xla_matches_naive(mask):
  rng = np.random.default_rng(0)
  b, h, hkv, d = 2, 6, 3, 8
  q = rng.standard_normal((b, mask.q_len, h, d)).astype(np.float32)
  k = rng.standard_normal((b, mask.kv_len, hkv, d)).astype(np.float32)
  v = rng.standard_normal((b, mask.kv_len, hkv, d)).astype(np.float32)
  got = attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  allowed = np.broadcast_to(mask.dense(), (b,) + mask.shape)
  np.testing.assert_allclose(np.asarray(got), naive(q, k, v, allowed), atol=1e-5, rtol=1e-5)
  # The same mask given as an explicit array gives the same result.
  got2 = attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                          jnp.asarray(mask.dense())[None])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(got2))


def test_empty_rows_give_zero_and_no_nan():
  q = jnp.ones((1, 3, 2, 4))
  k = v = jnp.ones((1, 5, 2, 4))
  allowed = jnp.array([[True] * 5, [False] * 5, [True, False, False, False, False]])[None]
  out, lse = attention.xla_attention(q, k, v, allowed, return_lse=True)
  assert np.all(np.asarray(out[0, 1]) == 0) and np.isneginf(np.asarray(lse[0, :, 1])).all()
  g = jax.grad(lambda q: attention.attend(q, k, v, allowed).sum())(q)
  assert np.isfinite(np.asarray(g)).all()


def test_segment_ids_restrict_attention():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((1, 6, 2, 4)), jnp.float32)
  kv = jnp.asarray(rng.standard_normal((1, 6, 2, 4)), jnp.float32)
  seg = jnp.array([[0, 0, 0, 1, 1, 1]])
  full = attention.attend(q, kv, kv, masks.causal(6), segment_ids=(seg, seg))
  first = attention.attend(q[:, :3], kv[:, :3], kv[:, :3], masks.causal(3))
  np.testing.assert_allclose(np.asarray(full[:, :3]), np.asarray(first), atol=1e-6)


def test_errors_name_the_problem():
  q = jnp.ones((1, 4, 3, 8))
  kv = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="kv_heads"):
    attention.attend(q, kv, kv)
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="impl"):
    attention.attend(q, kv, kv, impl="flash")
  with pytest.raises(ValueError, match="mask shape"):
    attention.attend(q, kv, kv, masks.causal(5))
  with pytest.raises(ValueError, match="GPU"):
    attention.attend(q.astype(jnp.bfloat16), kv.astype(jnp.bfloat16), kv.astype(jnp.bfloat16),
                     masks.causal(4), impl="cudnn")
