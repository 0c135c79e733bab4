"""The decoder: training computes exactly what sampling will see."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import masks
from bdiff.models import default_model_config, make_model, two_stream_logits

V = 17


def small_config(**kw):
  cfg = default_model_config()
  cfg.update(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
             mlp_dim=48, dtype="float32")
  cfg.update(**kw)
  return cfg


def setup(cfg, n, block):
  model = make_model(cfg)
  x0 = jax.random.randint(jax.random.key(0), (2, n), 0, V)
  xt = jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, (2, n)), V, x0)
  pos = jnp.zeros((1, 2 * n), jnp.int32)
  params = model.init(jax.random.key(2), jnp.zeros((1, 2 * n), jnp.int32), pos,
                      masks.bd3_training(n, block))
  return model, params, x0, xt


def jitted(model):
  """model.apply under jit with the mask static (masks are hashable)."""
  return jax.jit(model.apply, static_argnums=(3,), static_argnames=("return_kv",))


def positions(start, length, batch=2):
  return jnp.broadcast_to(jnp.arange(start, start + length), (batch, length))


@pytest.mark.parametrize("scan,qk_norm,tied", [(True, False, True), (False, True, False)])
@pytest.mark.parametrize("n,block", [(12, 4), (8, 1), (12, 12), (10, 5)])
def test_two_stream_equals_blockwise_forward(scan, qk_norm, tied, n, block):
  """Noisy-half logits of block b == plain forward of [clean < b ; noisy b] (BD3-LM training).

  The plain forward runs on a full-length input whose blocks after b hold junk: the
  block-causal mask must make them irrelevant, and one shape compiles once.
  """
  cfg = small_config(scan_layers=scan, qk_norm=qk_norm, tie_embeddings=tied)
  model, params, x0, xt = setup(cfg, n, block)
  noisy, clean = jax.jit(two_stream_logits, static_argnums=(0, 4))(model, params, xt, x0, block)
  assert noisy.shape == (2, n, V) and clean is None
  apply = jitted(model)
  junk = jax.random.randint(jax.random.key(9), x0.shape, 0, V + 1)
  idx = jnp.arange(n)
  for b in range(n // block):
    lo, hi = b * block, (b + 1) * block
    tokens = jnp.where(idx < lo, x0, jnp.where(idx < hi, xt, junk))
    ref = apply(params, tokens, positions(0, n), masks.block_causal(n, n, block))
    np.testing.assert_allclose(np.asarray(noisy[:, lo:hi]), np.asarray(ref[:, lo:hi]),
                               atol=2e-5, rtol=2e-5)


def test_one_block_skips_clean_stream_with_equal_logits():
  """At block = n (MDLM) two_stream_logits runs the noisy stream alone; its logits equal the
  noisy half of the full [x_t ; x_0] forward, with and without packed segment ids."""
  n = 12
  model, params, x0, xt = setup(small_config(), n, n)
  seg = jnp.asarray([[0] * 5 + [1] * 7, [0] * 12])
  for segment_ids in (None, seg):
    fast, _ = two_stream_logits(model, params, xt, x0, n, segment_ids=segment_ids)
    both = None if segment_ids is None else (jnp.tile(segment_ids, 2),) * 2
    full = model.apply(params, jnp.concatenate([xt, x0], 1), jnp.tile(positions(0, n), 2),
                       masks.bd3_training(n, n), segment_ids=both)[:, :n]
    np.testing.assert_allclose(np.asarray(fast), np.asarray(full), atol=2e-5, rtol=2e-5)


def test_cached_forward_equals_two_stream():
  """Prefill clean blocks into a K/V cache, then the noisy block against it."""
  n, block = 12, 4
  cfg = small_config()
  model, params, x0, xt = setup(cfg, n, block)
  noisy, _ = jax.jit(two_stream_logits, static_argnums=(0, 4))(model, params, xt, x0, block)
  b = 2
  prefix = b * block
  apply = jitted(model)
  _, kv = apply(params, x0[:, :prefix], positions(0, prefix),
                      masks.block_causal(prefix, prefix, block), return_kv=True)
  assert kv[0].shape == (cfg.n_layers, 2, prefix, cfg.n_kv_heads, cfg.head_dim)
  out = jax.jit(model.apply, static_argnums=(3,))(
      params, xt[:, prefix:prefix + block], positions(prefix, block),
      masks.block_causal(block, prefix + block, block, q_offset=prefix), cache=kv)
  np.testing.assert_allclose(np.asarray(out), np.asarray(noisy[:, prefix:prefix + block]),
                             atol=2e-5, rtol=2e-5)


def test_clean_stream_logits_and_context_causal():
  n, block = 8, 4
  model, params, x0, xt = setup(small_config(), n, block)
  _, clean = two_stream_logits(model, params, xt, x0, block, context_causal=True,
                               want_clean=True)
  # Context-causal clean stream is exactly a token-causal AR forward of x0.
  ar = model.apply(params, x0, positions(0, n), masks.causal(n))
  np.testing.assert_allclose(np.asarray(clean), np.asarray(ar), atol=2e-5, rtol=2e-5)


def test_every_parameter_has_logical_axes():
  cfg = small_config(qk_norm=True, tie_embeddings=False)
  model = make_model(cfg)
  boxed = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32),
                                              jnp.zeros((1, 8), jnp.int32), masks.causal(8)),
                         jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim and None not in leaf.names
  names = {n for leaf in leaves for n in leaf.names}
  assert "layers" in names  # scanned stack carries its own logical axis


def test_embedding_has_mask_row_and_head_excludes_it():
  cfg = small_config()
  model, params, x0, _ = setup(cfg, 8, 4)
  assert nn.meta.unbox(params)["params"]["embed"].shape == (V + 1, cfg.d_model)
  logits = model.apply(params, x0, positions(0, 8), masks.causal(8))
  assert logits.shape[-1] == V and logits.dtype == jnp.float32


def test_bf16_compute_keeps_fp32_params():
  cfg = small_config(dtype="bfloat16")
  model, params, x0, xt = setup(cfg, 8, 4)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  noisy, _ = two_stream_logits(model, params, xt, x0, 4)
  assert noisy.dtype == jnp.float32 and np.isfinite(np.asarray(noisy)).all()


def test_remat_matches_plain_gradients():
  n, block = 8, 4
  base = small_config()
  model, params, x0, xt = setup(base, n, block)

  def loss(p, cfg):
    logits, _ = two_stream_logits(make_model(cfg), p, xt, x0, block)
    return jnp.mean(logits ** 2)

  remat = small_config(remat="full")
  g_plain = jax.jit(jax.grad(lambda p: loss(p, base)))(params)
  g_remat = jax.jit(jax.grad(lambda p: loss(p, remat)))(params)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
