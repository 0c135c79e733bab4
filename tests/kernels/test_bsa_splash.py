"""The bdiff TPU kernel equals jax's own splash attention, both in interpret mode on CPU.

Splash (``jax.experimental.pallas.ops.tpu.splash_attention``, jax 0.11.2) runs on CPU with
``interpret=True``. It needs lengths that are multiples of its blocks, takes heads-major
unbatched inputs and no logit scale, and gives undefined results on rows with no allowed key,
so these masks have none.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from bdiff import masks
from pallas_kernels.block_sparse_attention import api

from bsa_common import assert_close

T, H, D = 256, 2, 64


def _splash_mask(name):
  """(bdiff mask, equivalent splash mask) pairs: computable masks where splash has them."""
  if name == "causal":
    return masks.causal(T), splash.CausalMask((T, T))
  if name == "sliding_window":
    return (masks.sliding_window(T, T, left=40, right=8),
            splash.LocalMask((T, T), window_size=(40, 8), offset=0))
  mask = {"block_causal": masks.block_causal(T, T, 16),
          "bd3": masks.bd3_training(T // 2, 16)}[name]
  return mask, splash.NumpyMask(mask.dense())


@pytest.mark.parametrize("name", ["causal", "sliding_window", "block_causal", "bd3"])
def test_kernel_equals_splash_attention(name):
  mask, splash_mask = _splash_mask(name)
  sizes = splash.BlockSizes(block_q=128, block_kv=128, block_kv_compute=128,
                            block_q_dkv=128, block_kv_dkv=128, block_kv_dkv_compute=128,
                            block_q_dq=128, block_kv_dq=128)
  kernel = splash.make_splash_mha(splash.MultiHeadMask([splash_mask] * H), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=True)
  plan = api.plan_for_mask(mask, block_q=64, block_k=128)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, dout = (jax.random.normal(key, (1, T, H, D)) for key in keys)
  hm = lambda x: x.transpose(0, 2, 1, 3)

  def ours(q, k, v):
    return api.block_sparse_attention(q, k, v, plan, scale=1.0, backend="tpu_interpret")

  def theirs(q, k, v):
    return hm(kernel(hm(q)[0], hm(k)[0], hm(v)[0])[None])

  out, vjp = jax.jit(lambda *a: jax.vjp(ours, *a))(q, k, v)
  out_s, vjp_s = jax.jit(lambda *a: jax.vjp(theirs, *a))(q, k, v)
  assert_close(out, out_s, jnp.float32, "out")
  for g, g_s, what in zip(vjp(dout), vjp_s(dout), "qkv"):
    assert_close(g, g_s, jnp.float32, "d" + what)
  assert np.asarray(mask.dense()).any(axis=1).all()
