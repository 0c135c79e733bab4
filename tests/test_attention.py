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


def test_xla_empty_rows_give_zero_lse_minus_inf_and_finite_grads():
  q = jnp.ones((1, 3, 2, 4))
  k = v = jnp.ones((1, 5, 2, 4))
  allowed = jnp.array([[True] * 5, [False] * 5, [True, False, False, False, False]])[None]
  out, lse = attention.xla_attention(q, k, v, allowed, return_lse=True)
  assert np.all(np.asarray(out[0, 1]) == 0) and np.isneginf(np.asarray(lse[0, :, 1])).all()
  g = jax.grad(lambda q: attention.attend(q, k, v, allowed).sum())(q)
  assert np.isfinite(np.asarray(g)).all()


# Rows q >= 19 see no key through the mask; query segment 9 (no key has it) empties rows 2, 7.
EMPTY_ROW_MASK = masks.sliding_window(24, 16, left=3)


def _empty_row_case(dtype):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, 24, 4, 16)).astype(dtype)
  k, v = (jax.random.normal(key, (2, 16, 2, 16)).astype(dtype) for key in keys[1:3])
  dout = jax.random.normal(keys[3], q.shape).astype(dtype)
  q_seg = np.zeros((2, 24), np.int32)
  q_seg[:, [2, 7]] = 9
  seg = (jnp.asarray(q_seg), jnp.zeros((2, 16), jnp.int32))
  empty = ~(EMPTY_ROW_MASK.dense()[None] & (q_seg[:, :, None] == 0)).any(-1)  # [b, q]
  return (q, k, v), dout, seg, empty


def _cudnn_through_xla(monkeypatch, seen_masks):
  """impl="cudnn" on CPU: jax's XLA implementation stands in for the cuDNN kernel, so the
  wrapper around it (mask building, empty-row guard) runs as it would on a GPU."""
  real = jax.nn.dot_product_attention

  def stand_in(q, k, v, *args, implementation=None, **kwargs):
    assert implementation == "cudnn"
    seen_masks.append(kwargs.get("mask"))
    return real(q, k, v, *args, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


@pytest.mark.parametrize("backend", ["xla", "pallas/reference", "pallas/tpu_interpret",
                                     "cudnn/xla_stand_in"])
def test_rows_with_no_allowed_key_return_zero_on_every_backend(backend, monkeypatch):
  """The empty-row contract: output 0 (not NaN, not the mean of V), gradients 0 and finite.

  cuDNN itself is not exercised (no GPU): the stand-in returns the mean of V on a fully masked
  row, as a fused kernel with a finite mask value does, so only the wrapper's guard makes the
  rows 0. The other backends run their real code.
  """
  impl, _, kernel = backend.partition("/")
  dtype = jnp.bfloat16 if impl == "cudnn" else jnp.float32
  seen_masks = []
  if impl == "cudnn":
    _cudnn_through_xla(monkeypatch, seen_masks)
  (q, k, v), dout, seg, empty = _empty_row_case(dtype)
  assert empty.any() and not empty.all()
  kwargs = dict(backend=kernel) if impl == "pallas" else {}
  f = lambda q, k, v: attention.attend(q, k, v, EMPTY_ROW_MASK, impl=impl, segment_ids=seg,
                                       **kwargs)
  out, vjp = jax.vjp(f, q, k, v)
  dq, dk, dv = (np.asarray(g, np.float32) for g in vjp(dout))
  out = np.asarray(out, np.float32)
  assert np.all(out[empty] == 0) and np.isfinite(out).all()
  assert np.all(dq[empty] == 0)
  assert all(np.isfinite(g).all() for g in (dq, dk, dv))
  expected = attention.xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                     EMPTY_ROW_MASK, segment_ids=seg)
  tol = 2e-2 if dtype == jnp.bfloat16 else 2e-5
  np.testing.assert_allclose(out, np.asarray(expected), atol=tol, rtol=tol)
  if impl == "cudnn":  # the fused kernel never saw a fully masked row
    assert seen_masks and all(np.asarray(m).any(-1).all() for m in seen_masks)


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
