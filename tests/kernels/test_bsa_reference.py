"""The plan reference equals bdiff's dense XLA attention (the oracle's oracle)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import attention
from pallas_kernels.block_sparse_attention import api
from pallas_kernels.block_sparse_attention import plan as plan_lib
from pallas_kernels.block_sparse_attention import reference

from bsa_common import MASKS, assert_close, qkv


def _xla_loss(q, k, v, mask, dout):
  out, lse = attention.xla_attention(q, k, v, mask, return_lse=True)
  return jnp.sum(out * dout) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))


@pytest.mark.parametrize("name", sorted(MASKS))
def test_reference_equals_xla_attention(name):
  mask = MASKS[name]
  plan = plan_lib.plan_for_mask(mask, block_q=32, block_k=16)
  q, k, v = qkv(jax.random.key(0), 2, mask.q_len, mask.kv_len, 4, 2, 32)
  dout = jax.random.normal(jax.random.key(1), q.shape)

  @jax.jit
  def both(q, k, v):
    with jax.default_matmul_precision("highest"):
      def loss(q, k, v):
        o, l = reference.attention(q, k, v, plan)
        return jnp.sum(o * dout) + jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0)), (o, l)

      (_, (out, lse)), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
      out_x, lse_x = attention.xla_attention(q, k, v, mask, return_lse=True)
      grads_x = jax.grad(_xla_loss, argnums=(0, 1, 2))(q, k, v, mask, dout)
    return out, lse, grads, out_x, lse_x, grads_x

  out, lse, grads, out_x, lse_x, grads_x = both(q, k, v)
  assert_close(out, out_x, jnp.float32, "out")
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_x))
  assert_close(jnp.where(jnp.isfinite(lse), lse, 0), jnp.where(jnp.isfinite(lse_x), lse_x, 0),
               jnp.float32, "lse")
  for g, gx, what in zip(grads, grads_x, "qkv"):
    assert np.all(np.isfinite(g)), what
    assert_close(g, gx, jnp.float32, "d" + what)


def test_reference_of_dynamic_plan_equals_xla_with_its_dense_mask():
  mask = MASKS["bd3"]
  kind = plan_lib.tile_kinds(mask, 16, 16)
  scores = jax.random.uniform(jax.random.key(2), (2, 4) + kind.shape)
  plan = plan_lib.plan_from_scores(scores, mask, k=3, block_q=16, block_k=16)
  q, k, v = qkv(jax.random.key(3), 2, mask.q_len, mask.kv_len, 4, 2, 32)
  dense = reference.dense_mask(plan)  # [b, heads, q, kv]: per-head top-k
  with jax.default_matmul_precision("highest"):
    out, lse = api.block_sparse_attention(q, k, v, plan, backend="reference", return_lse=True)
    out_x, lse_x = jax.jit(lambda *a: attention.xla_attention(*a, return_lse=True))(
        q, k, v, dense)
  assert_close(out, out_x, jnp.float32, "out")
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_x))
  assert_close(jnp.where(jnp.isfinite(lse), lse, 0), jnp.where(jnp.isfinite(lse_x), lse_x, 0),
               jnp.float32, "lse")
