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
  * ``"tokamax"``: tokamax's Mosaic GPU flash attention (openxla/tokamax, sm80/sm90/sm100),
    an optional dependency (``pip install -e .[gpu]``) imported when called. The mask goes in
    the per-row key-range form of :mod:`bdiff.mask_ranges`, exact for every mask; explicit
    arrays and segment ids go in its dense bool mask. **Untested on GPU**: its wrapper logic
    (mask fields, the empty-row guard) is tested on CPU through tokamax's XLA implementation.

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
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bdiff import mask_ranges
from bdiff import masks as masks_lib
from pallas_kernels.block_sparse_attention import api
from pallas_kernels.block_sparse_attention import reference as bsa_reference

IMPLS = ("xla", "cudnn", "pallas", "tokamax")


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


def _check_mask_shape(mask: masks_lib.Mask, q_len: int, kv_len: int) -> None:
  if mask.shape != (q_len, kv_len):
    raise ValueError(f"mask shape {mask.shape} does not match (q_len, kv_len)="
                     f"{(q_len, kv_len)}")


def _as_bool_array(mask, q_len: int, kv_len: int, segment_ids):
  """The mask as a jnp bool array broadcastable to [b, h, q, kv], or None for all-true."""
  if isinstance(mask, masks_lib.Mask):
    _check_mask_shape(mask, q_len, kv_len)
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
  has_key = jnp.any(arr, axis=-1)
  out = jax.nn.dot_product_attention(q, k, v, mask=arr | ~has_key[..., None], scale=scale,
                                     implementation=implementation)
  return _zero_rows_without_key(out, has_key)


def _zero_rows_without_key(out, has_key):
  """out [b, q, h, d] with 0 on the rows where has_key [b or 1, h or 1, q] is False.

  The ``where`` also sends those rows a zero cotangent, so their gradients are 0 too.
  """
  keep = jnp.asarray(has_key).transpose(0, 2, 1)[..., None]  # [b, q, h or 1, 1]
  return jnp.where(keep, out, jnp.zeros_like(out))


def pallas_attention(q, k, v, mask, *, segment_ids=None, scale=None, backend=None,
                     return_lse: bool = False):
  """Block-sparse Pallas kernels; the mask must be a static mask object.

  Runtime (per-row) structure goes through ``segment_ids``, which the kernels compare per
  tile. ``backend`` picks the kernel ("tpu", "tpu_interpret", "gpu", "gpu_interpret",
  "reference"); None = by platform. ``return_lse``: also the LSE [b, h, q] (natural log).
  """
  if not isinstance(mask, masks_lib.Mask):
    raise ValueError('impl="pallas" needs a bdiff.masks mask object (the sparsity plan is '
                     "built from it); got an explicit array: express per-row structure "
                     'as segment_ids, or use impl="xla"')
  plan = api.plan_for_mask(mask)
  return api.block_sparse_attention(q, k, v, plan, segment_ids=segment_ids, scale=scale,
                                    backend=backend, return_lse=return_lse)


class TokamaxMask(NamedTuple):
  """The fields of tokamax's ``Mask`` (None = part absent), every row given a key.

  ``k_start``/``k_end`` int32 [1, 1, q] or [b, 1, q]; ``causal`` (offset, window) or None;
  ``bool_mask`` [b or 1, h or 1, q, kv]; ``has_key`` [b or 1, h or 1, q] (None: every row has
  a key), the rows whose output is real (the others were opened to every key and are zeroed).
  """
  bool_mask: jax.Array | None
  k_start: jax.Array | None
  k_end: jax.Array | None
  causal: tuple[int, int | None] | None
  has_key: jax.Array | None


def tokamax_mask(mask, q_len: int, kv_len: int, segment_ids=None) -> TokamaxMask:
  """``mask`` (a :mod:`bdiff.masks` object, an explicit bool array or None) and
  ``segment_ids`` as tokamax ``Mask`` fields, exact, with no row left empty.

  A fused kernel may return NaN or the mean of V on a row with no key, so such rows are opened
  to every key here and zeroed after the call (the empty-row contract). A mask object alone is
  translated on the host (:func:`bdiff.mask_ranges.to_ranges`); explicit arrays and segment ids
  are runtime values, so they join the dense bool mask, and the static ranges still bound it.
  """
  if isinstance(mask, masks_lib.Mask):
    _check_mask_shape(mask, q_len, kv_len)
    form = mask_ranges.to_ranges(mask)
  else:
    form = mask_ranges.RangeForm(q_len, kv_len)
  if segment_ids is None and (mask is None or isinstance(mask, masks_lib.Mask)):
    return _static_tokamax_mask(form)
  return _runtime_tokamax_mask(form, _as_bool_array(mask, q_len, kv_len, segment_ids))


def _static_tokamax_mask(form: mask_ranges.RangeForm) -> TokamaxMask:
  """Fields of a host-side form; the causal part is kept (tokamax's fast path) unless a row
  has to be opened."""
  has_key = form.rows_with_key()
  if not has_key.all():
    form = form.opened(~has_key)
  as_rows = lambda x: None if x is None else jnp.asarray(x)[None, None]  # [1, 1, q(, kv)]
  causal = None if form.causal_offset is None else (form.causal_offset, form.causal_window)
  return TokamaxMask(as_rows(form.bool_mask), as_rows(form.k_start), as_rows(form.k_end),
                     causal, None if has_key.all() else as_rows(has_key))


def _runtime_tokamax_mask(form: mask_ranges.RangeForm, allowed) -> TokamaxMask:
  """Fields when the rule holds runtime parts: ``allowed`` [b or 1, h or 1, q, kv] is the whole
  rule and goes in the bool mask; the host-side ranges only bound the tiles tokamax visits."""
  has_key = jnp.any(allowed, axis=-1)  # [b or 1, h or 1, q]
  lo, hi = (jnp.asarray(x, jnp.int32) for x in form.row_bounds())
  row_open = ~jnp.all(has_key, axis=1, keepdims=True)  # [b or 1, 1, q]: some head has no key
  return TokamaxMask(allowed | ~has_key[..., None], jnp.where(row_open, 0, lo),
                     jnp.where(row_open, form.kv_len, hi), None, has_key)


def _import_tokamax():
  """tokamax's attention op table and mask classes (``_src`` paths: tokamax 0.0.17 exports the
  Mosaic GPU op class but not the ``Mask`` with per-row key ranges)."""
  try:
    from tokamax._src.ops.attention import api as tk_api  # pylint: disable=import-outside-toplevel
    from tokamax._src.ops.attention import base as tk_base  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('impl="tokamax" needs the optional tokamax package: pip install -e '
                      '.[gpu] (or pip install tokamax)') from e
  return tk_api, tk_base


def tokamax_attention(q, k, v, mask=None, *, segment_ids=None, scale=None,
                      implementation: str = "mosaic_gpu"):
  """tokamax flash attention under a bdiff mask; clear errors where tokamax cannot run it.

  ``implementation``: a tokamax implementation name: "mosaic_gpu" (what ``impl="tokamax"``
  runs; sm80/sm90/sm100 GPUs) or "xla" (tokamax's reference, which runs on CPU: the tests use
  it to exercise this wrapper). Untested on GPU (no GPU run yet).
  """
  _check_shapes(q, k, v)
  if implementation == "mosaic_gpu" and jax.default_backend() != "gpu":
    raise ValueError(f'impl="tokamax" runs tokamax\'s Mosaic GPU attention, which needs an '
                     f'NVIDIA GPU (sm80/sm90/sm100); running on "{jax.default_backend()}"; '
                     f'use impl="xla" or "pallas"')
  if implementation == "mosaic_gpu" and q.dtype not in (jnp.bfloat16, jnp.float16):
    # Its forward would take fp32, but its backward raises deep inside jax.grad.
    raise ValueError(f'impl="tokamax" needs bf16 or fp16 inputs, got {q.dtype}')
  tk_api, tk_base = _import_tokamax()
  if implementation not in tk_api.IMPLEMENTATIONS:
    raise ValueError(f"tokamax implementation {implementation!r} is not available here; "
                     f"available: {sorted(tk_api.IMPLEMENTATIONS)}")
  fields = tokamax_mask(mask, q.shape[1], k.shape[1], segment_ids)
  causal = None if fields.causal is None else tk_base.CausalMask(*fields.causal)
  tk_mask = tk_base.Mask(fields.bool_mask, causal_mask=causal, k_start=fields.k_start,
                         k_end=fields.k_end)
  try:
    out = tk_api.IMPLEMENTATIONS[implementation](
        q, k, v, mask=tk_mask, logits_scale=tk_base.AUTO if scale is None else float(scale))
  except NotImplementedError as e:  # tokamax's way of saying "not on this device/input"
    raise ValueError(f'impl="tokamax" ({implementation}) cannot run q{q.shape} {q.dtype}: '
                     f"{e}") from e
  return out if fields.has_key is None else _zero_rows_without_key(out, fields.has_key)


def attend(q, k, v, mask=None, *, impl: str = "xla", segment_ids=None, scale=None,
           backend: str | None = None):
  """Multi-head attention with GQA.

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0.
    mask: a :mod:`bdiff.masks` object, a bool array broadcastable to [b, (h,) q, kv], or None.
    impl: "xla", "cudnn", "pallas" or "tokamax".
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
  if impl == "tokamax":
    return tokamax_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale)
  raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


# --------------------------------------------------------------------------------------------
# Attention over disjoint key sets, merged through the log-sum-exp (FlashBlock caching).

LSE_IMPLS = ("xla", "pallas")  # backends that return (O, LSE)


def attend_under_plan(q, k, v, mask, plan, *, impl: str = "xla", backend: str | None = None,
                      segment_ids=None):
  """Attention restricted to a runtime block-sparse ``plan`` (per-row, per-head key tiles).

  ``impl="pallas"`` runs the block-sparse kernels on the plan itself (only the listed tiles
  are computed; ``backend`` as in :func:`pallas_attention`); every other impl gets the plan's
  dense bool mask (same result, dense cost). The plan already holds the whole pattern, so the
  static mask must be full attention.
  """
  if not (mask is None or isinstance(mask, masks_lib.Full)):
    raise ValueError("a sparsity plan replaces the attention mask: it needs full attention "
                     f"(mask None or bdiff.masks.Full), got {type(mask).__name__}")
  if impl == "pallas":
    return api.block_sparse_attention(q, k, v, plan, segment_ids=segment_ids, backend=backend)
  return attend(q, k, v, bsa_reference.dense_mask(plan), impl=impl, segment_ids=segment_ids)


def attend_with_lse(q, k, v, mask=None, *, impl: str = "xla", segment_ids=None, scale=None,
                    backend: str | None = None):
  """:func:`attend` that also returns the log-sum-exp of each query row's logits.

  Returns:
    ``(out [b, q, h, d] in q's dtype, lse f32 [b, h, q])``, natural log, ``-inf`` (and out 0)
    on a row with no allowed key. Only the xla and pallas backends expose the LSE.
  """
  if impl == "xla":
    return xla_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale, return_lse=True)
  if impl == "pallas":
    return pallas_attention(q, k, v, mask, segment_ids=segment_ids, scale=scale,
                            backend=backend, return_lse=True)
  raise ValueError(f"attention with its log-sum-exp needs impl in {LSE_IMPLS}, got {impl!r} "
                   "(the cuDNN and tokamax wrappers do not return it)")


def merge_attention(*parts):
  """The attention over the union of disjoint key sets, from each set's ``(out, lse)``.

  ``out [b, q, h, d]``, ``lse [b, h, q]`` (natural log, same logit scale in every part). The
  union's LSE is ``logaddexp`` of the parts' and each part is weighted by ``exp(lse_i - lse)``;
  an empty part (``lse = -inf``) weighs 0, and a row empty in every part stays 0 with LSE
  ``-inf``, never NaN. Computed in fp32 (a bf16 LSE would shift a part's weight by up to 3 %).

  Returns:
    ``(out f32 [b, q, h, d], lse f32 [b, h, q])``.
  """
  lses = [jnp.asarray(lse, jnp.float32) for _, lse in parts]
  total = lses[0]
  for lse in lses[1:]:
    total = jnp.logaddexp(total, lse)
  shift = jnp.where(jnp.isfinite(total), total, 0.0)
  out = 0.0
  for (o, _), lse in zip(parts, lses):
    weight = jnp.where(lse == -jnp.inf, 0.0, jnp.exp(lse - shift))  # [b, h, q]
    out = out + weight.transpose(0, 2, 1)[..., None] * o.astype(jnp.float32)
  return out, total


def split_at_cache(mask, segment_ids, cache_size: int):
  """A forward's rule over ``[cache (cache_size) ; window]`` keys, cut into its two parts.

  Returns ``((mask, segment_ids) over the cache keys, (mask, segment_ids) over the window
  keys)``. The sampler's ``CacheWindow`` splits into full attention over the cache (per-row
  validity stays in the segment ids) and the block-causal window, both static mask objects
  (the pallas backend can run them); another mask object or an explicit array is cut as a
  dense array (xla backend).
  """
  if cache_size <= 0:
    raise ValueError(f"split_at_cache needs a cache (cache_size > 0), got {cache_size}")
  if isinstance(mask, masks_lib.CacheWindow) and mask.cache_size == cache_size:
    parts = (masks_lib.full(mask.width, cache_size),
             masks_lib.block_causal(mask.width, mask.width, mask.block_size))
  elif mask is None:
    parts = (None, None)
  else:
    arr = mask.jnp_array() if isinstance(mask, masks_lib.Mask) else jnp.asarray(mask, bool)
    parts = (arr[..., :cache_size], arr[..., cache_size:])
  if segment_ids is None:
    return (parts[0], None), (parts[1], None)
  q_seg, kv_seg = segment_ids
  return ((parts[0], (q_seg, kv_seg[:, :cache_size])),
          (parts[1], (q_seg, kv_seg[:, cache_size:])))


def attend_split(q, window_kv, cache_kv, mask=None, *, ext=None, impl: str = "xla",
                 segment_ids=None, backend: str | None = None):
  """Attention of ``q`` over ``[cache ; window]`` keys as two parts merged in log space.

  FlashBlock caching (Caesarhhh/FlashBlock): the *external* part (the cache keys) is computed
  once and reused while the window is denoised; only the *internal* part (the window's own
  keys) is recomputed. ``mask`` and ``segment_ids`` are the whole forward's rule over
  ``cache_len + window_len`` keys (as :func:`attend` would take them).

  Args:
    q: [b, l, h, d].
    window_kv: (k, v) [b, l, kv_heads, d], this call's keys.
    cache_kv: (k, v) [b, S, kv_heads, d]; with ``ext`` given only its length S is used.
    ext: None, or the external part ``(out f32 [b, l, h, d], lse f32 [b, h, l])`` of an
      earlier call, used in place of attending the cache.

  Returns:
    ``(out [b, l, h, d] in q's dtype, (out_ext f32, lse_ext f32))``: the merged attention and
    the external part it used (``ext`` itself when given).
  """
  (ext_mask, ext_seg), (int_mask, int_seg) = split_at_cache(mask, segment_ids,
                                                            cache_kv[0].shape[1])
  if ext is None:
    k, v = (c.astype(q.dtype) for c in cache_kv)
    o_ext, lse_ext = attend_with_lse(q, k, v, ext_mask, impl=impl, segment_ids=ext_seg,
                                     backend=backend)
    ext = (o_ext.astype(jnp.float32), lse_ext)
  internal = attend_with_lse(q, *window_kv, int_mask, impl=impl, segment_ids=int_seg,
                             backend=backend)
  out, _ = merge_attention(ext, internal)
  return out.astype(q.dtype), ext
