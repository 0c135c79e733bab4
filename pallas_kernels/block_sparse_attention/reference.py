"""Pure-JAX block-sparse attention applying a :class:`SparsityPlan`: the oracle.

Dense expansion of the plan: ``allowed[q, k] = listed(q//Bq, k//Bk) & (full |
predicate(q, k)) & (k < kv_len)``, ANDed with segment equality when segment ids are given,
then an f32 masked softmax. Autodiff gives the gradients.
Memory is O(Bp·Hp·Tq·Tk): tests and short sequences only.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from pallas_kernels.block_sparse_attention import plan as plan_lib


def dense_mask(plan: plan_lib.SparsityPlan):
  """bool [Bp, Hp, q_len, kv_len]: the mask the plan defines."""
  cls = plan_lib.tile_classes(plan)  # [Bp, Hp, nq, nk]
  bq, bk = plan.block_q, plan.block_k
  cls = jnp.repeat(jnp.repeat(cls, bq, axis=2), bk, axis=3)[..., :plan.q_len, :plan.kv_len]
  q = jnp.arange(plan.q_len, dtype=jnp.int32)[:, None]
  k = jnp.arange(plan.kv_len, dtype=jnp.int32)[None, :]
  return (cls == plan_lib.FULL) | ((cls == plan_lib.PARTIAL) & plan.allowed(q, k))


def _group_mask(allowed, heads: int, kv_heads: int):
  """[Bp, Hp, q, k] -> broadcastable to [b, kv_heads, group, q, k]."""
  bp, hp = allowed.shape[:2]
  if hp in (1, kv_heads):
    return allowed[:, :, None]
  if hp == heads:
    return allowed.reshape(bp, kv_heads, heads // kv_heads, *allowed.shape[2:])
  raise ValueError(f"plan has {hp} head groups; expected 1, kv_heads={kv_heads} or "
                   f"heads={heads}")


def attention(q, k, v, plan: plan_lib.SparsityPlan, *, scale: float | None = None,
              segment_ids=None):
  """Reference attention under a plan.

  Args:
    q: [b, q_len, heads, d]; k, v: [b, kv_len, kv_heads, d] (GQA: heads % kv_heads == 0).
    plan: the sparsity plan (group dims broadcast over batch and heads).
    scale: logit scale, default 1/sqrt(d).
    segment_ids: optional (q_seg [b, q_len], kv_seg [b, kv_len]) integers: elements whose
      segments differ are masked too.

  Returns:
    out [b, q_len, heads, d] in q.dtype (0 on rows with no allowed key) and lse f32
    [b, heads, q_len] (natural log, -inf on such rows).
  """
  b, lq, h, d = q.shape
  hkv = k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  allowed = dense_mask(plan)  # [Bp, Hp, q, k]
  if segment_ids is not None:
    allowed = allowed & masks_lib.segment_mask(*segment_ids)[:, None]  # [b, Hp, q, k]
  allowed = _group_mask(allowed, h, hkv)  # [Bp or b, hkv|1, g|1, q, k]
  qg = q.astype(jnp.float32).reshape(b, lq, hkv, g, d)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) * scale
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  p = jnp.exp(logits - row_max)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  empty = denom == 0
  probs = p / jnp.where(empty, 1.0, denom)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  lse = jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, 1.0, denom)) + row_max)
  return out.reshape(b, lq, h, d).astype(q.dtype), lse[..., 0].reshape(b, h, lq)
