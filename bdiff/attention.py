"""One ``attend()`` for every attention backend.

Backends:
  * ``"xla"``: dense reference in plain jnp, fp32 softmax, GQA by grouping query heads.
  * ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (cuDNN's fused
    flash attention). Causal masks map to ``is_causal`` (tiles skipped); every other mask is
    passed as an explicit boolean mask (dense cost: no block sparsity). cuDNN needs a GPU and
    fp16/bf16. **Untested on GPU**: it has never run on a GPU; only its wrapper logic (mask
    construction, the empty-row guard) is tested, on CPU through jax's XLA implementation.
  * ``"pallas"``: the block-sparse kernels of ``pallas_kernels.block_sparse_attention``, driven
    by the sparsity plan built from the mask object.

Empty-row contract, on every backend: a query row with no allowed key returns 0 (and, with an
LSE, -inf), never NaN and never the mean of V; its gradients are 0. The xla backend and the
Pallas kernels get this from a zero softmax denominator; the cuDNN wrapper enforces it around
the fused call, whatever cuDNN does with a fully masked row.

Masks are :mod:`bdiff.masks` objects, or explicit boolean arrays broadcastable to
``[batch, q_len, kv_len]`` / ``[batch, heads, q_len, kv_len]`` for runtime masks (xla and cudnn
only). ``segment_ids=(q_seg [b, q], kv_seg [b, kv])`` restricts attention to equal segments
(packed sequences; the sampler's per-row cache validity) on every backend.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from pallas_kernels.block_sparse_attention import api

IMPLS = ("xla", "cudnn", "pallas")


def _check_shapes(q, k, v) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        "attend expects q [batch, q_len, heads, head_dim] and k, v "
        f"[batch, kv_len, kv_heads, head_dim]; got q{q.shape} k{k.shape} v{v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got k{k.shape} v{v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q and k disagree on batch or head_dim: q{q.shape} k{k.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(
        f"heads={q.shape[2]} must be a multiple of kv_heads={k.shape[2]} (GQA)")


def _as_bool_array(mask, q_len: int, kv_len: int, segment_ids):
  """The mask as a jnp bool array broadcastable to [b, h, q, kv], or None for all-true."""
  if isinstance(mask, masks_lib.Mask):
    if mask.shape != (q_len, kv_len):
      raise ValueError(f"mask shape {mask.shape} does not match (q_len, kv_len)="
                       f"{(q_len, kv_len)}")
    arr = None if isinstance(mask, masks_lib.Full) else mask.jnp_array()[None, None]
  elif mask is None:
    arr = None
  else:
    arr = jnp.asarray(mask, bool)
    if arr.ndim == 3:
      arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[-2:] != (q_len, kv_len):
      raise ValueError(f"explicit mask of shape {arr.shape} must broadcast to "
                       f"[batch, (heads,) {q_len}, {kv_len}]")
  if segment_ids is not None:
    seg = masks_lib.segment_mask(segment_ids[0], segment_ids[1])[:, None]
    arr = seg if arr is None else arr & seg
  return arr


def xla_attention(q, k, v, mask=None, *, segment_ids=None, scale=None,
                  return_lse: bool = False):
  """Dense reference attention. Returns out [b, q, h, d] (and LSE [b, h, q], natural log)."""
  _check_shapes(q, k, v)
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  allowed = _as_bool_array(mask, lq, k.shape[1], segment_ids)
  qg = q.reshape(b, lq, hkv, g, d)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k,
                      preferred_element_type=jnp.float32) * scale  # [b, hkv, g, q, k]
  if allowed is not None:
    allowed = jnp.broadcast_to(allowed, (allowed.shape[0], h, lq, lk))
    allowed = allowed.reshape(allowed.shape[0], hkv, g, lq, lk)
    logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  safe_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  p = jnp.exp(logits - safe_max)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  probs = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  out = out.reshape(b, lq, h, d).astype(q.dtype)
  if not return_lse:
    return out
  lse = jnp.where(denom[..., 0] == 0, -jnp.inf, jnp.log(denom[..., 0]) + safe_max[..., 0])
  return out, lse.reshape(b, h, lq)


def cudnn_attention(q, k, v, mask=None, *, segment_ids=None, scale=None):
  """cuDNN fused attention; clear errors where cuDNN cannot run the request.

  Untested on GPU (no GPU run yet). The empty-row guard around the call is tested on CPU by
  :func:`fused_attention` with jax's XLA implementation in cuDNN's place.
  """
  _check_shapes(q, k, v)
  if jax.default_backend() != "gpu":
    raise ValueError(f'impl="cudnn" needs a GPU backend, running on '
                     f'"{jax.default_backend()}"; use impl="xla" or "pallas"')
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f'impl="cudnn" needs bf16 or fp16 inputs, got {q.dtype}')
  return fused_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale,
                         implementation="cudnn")


def fused_attention(q, k, v, mask=None, *, segment_ids=None, scale=None,
                    implementation: str = "cudnn"):
  """``jax.nn.dot_product_attention`` with the empty-row contract enforced around it.

  A fused kernel given a fully masked row returns whatever its masking constant gives (the
  mean of V for a large finite negative, NaN for -inf). So an empty row is handed to the
  kernel with every key allowed (finite, discarded) and its output replaced by 0 here: the
  ``where`` also sends it a zero cotangent, so its gradients are 0 too.

  ``implementation``: "cudnn" (what ``impl="cudnn"`` runs) or "xla" (jax's reference
  implementation, which runs on CPU: the tests use it to exercise this wrapper).
  """
  is_causal = (isinstance(mask, masks_lib.Causal) and mask.q_offset == 0
               and mask.q_len == mask.kv_len and segment_ids is None)  # no empty row
  arr = None if is_causal else _as_bool_array(mask, q.shape[1], k.shape[1], segment_ids)
  if arr is None:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=is_causal,
                                        implementation=implementation)
  arr = jnp.broadcast_to(arr, (q.shape[0],) + arr.shape[1:])  # [b, h or 1, q, kv]
  has_key = jnp.any(arr, axis=-1, keepdims=True)
  out = jax.nn.dot_product_attention(q, k, v, mask=arr | ~has_key, scale=scale,
                                     implementation=implementation)
  keep = has_key.transpose(0, 2, 1, 3)  # [b, q, h or 1, 1], as out [b, q, h, d]
  return jnp.where(keep, out, jnp.zeros_like(out))


def pallas_attention(q, k, v, mask, *, segment_ids=None, scale=None, backend=None):
  """Block-sparse Pallas kernels; the mask must be a static mask object.

  Runtime (per-row) structure goes through ``segment_ids``, which the kernels compare per
  tile. ``backend`` picks the kernel ("tpu", "tpu_interpret", "gpu", "gpu_interpret",
  "reference"); None = by platform.
  """
  if not isinstance(mask, masks_lib.Mask):
    raise ValueError('impl="pallas" needs a bdiff.masks mask object (the sparsity plan is '
                     "built from it); got an explicit array: express per-row structure "
                     'as segment_ids, or use impl="xla"')
  plan = api.plan_for_mask(mask)
  return api.block_sparse_attention(q, k, v, plan, segment_ids=segment_ids, scale=scale,
                                    backend=backend)


def attend(q, k, v, mask=None, *, impl: str = "xla", segment_ids=None, scale=None,
           backend: str | None = None):
  """Multi-head attention with GQA.

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0.
    mask: a :mod:`bdiff.masks` object, a bool array broadcastable to [b, (h,) q, kv], or None.
    impl: "xla", "cudnn" or "pallas".
    segment_ids: optional (q_segment_ids [b, q], kv_segment_ids [b, kv]).
    scale: logit scale, default 1/sqrt(head_dim).
    backend: impl="pallas" only: kernel backend ("tpu", "tpu_interpret", "gpu",
      "gpu_interpret", "reference");
      None picks by platform.

  Returns:
    [batch, q_len, heads, head_dim] in q's dtype.
  """
  if impl == "xla":
    return xla_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale)
  if impl == "cudnn":
    return cudnn_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale)
  if impl == "pallas":
    return pallas_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale,
                            backend=backend)
  raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
