"""Public entry points of block-sparse attention.

``plan_for_mask`` turns a :mod:`bdiff.masks` object into a :class:`SparsityPlan`;
``block_sparse_attention`` runs attention under a plan on the backend of the platform:

  * ``"tpu"``: the Mosaic TPU kernel (:mod:`.tpu`), the default on TPU;
  * ``"tpu_interpret"``: the same kernel in Pallas interpret mode (CPU tests);
  * ``"gpu"``: the Mosaic GPU (Hopper) kernel (:mod:`.gpu`), bf16/f16 only; not yet the
    default on GPU (it has not run on hardware);
  * ``"gpu_interpret"``: the same kernel in the Mosaic GPU interpreter (CPU tests);
  * ``"reference"``: the pure-JAX oracle (:mod:`.reference`), the default on CPU, and on GPU
    until the Mosaic GPU kernel has run on hardware.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import gpu
from pallas_kernels.block_sparse_attention.backends import BACKENDS
from pallas_kernels.block_sparse_attention import plan as plan_lib
from pallas_kernels.block_sparse_attention import reference
from pallas_kernels.block_sparse_attention import tpu

SparsityPlan = plan_lib.SparsityPlan
plan_from_scores = plan_lib.plan_from_scores
plan_from_selection = plan_lib.plan_from_selection
# backend -> (kernel module, its ``interpret`` argument)
_KERNELS = {"tpu": (tpu, False), "tpu_interpret": (tpu, True), "gpu": (gpu, None),
            "gpu_interpret": (gpu, gpu.INTERPRET)}
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Kernel tile sizes. ``None`` keeps the plan's tiles.

  A static plan (from a mask) is rebuilt at other tile sizes; a dynamic (top-k) plan cannot
  be, so its tiles must match. The TPU kernel takes any multiple of 8 (128 and up suit the
  MXU best).
  """
  block_q: int | None = None
  block_k: int | None = None

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"BlockSizes.{name} must be a positive int or None, got {value!r}")


def plan_for_mask(mask, *, block_q: int = 128, block_k: int = 128) -> SparsityPlan:
  """Static sparsity plan of a mask object; see :func:`plan.plan_for_mask`."""
  return plan_lib.plan_for_mask(mask, block_q=block_q, block_k=block_k)


@functools.cache
def _warn_no_gpu_kernel() -> None:
  _log.warning("block_sparse_attention: no Mosaic GPU kernel by default (backend='gpu', "
               "gpu.py, has not run on a GPU yet); using the pure-JAX reference backend on "
               "GPU")


def _default_backend() -> str:
  platform = jax.default_backend()
  if platform == "tpu":
    return "tpu"
  if platform == "gpu":
    _warn_no_gpu_kernel()
  return "reference"


def _resolve_tiles(plan: SparsityPlan, block_sizes: BlockSizes | None) -> SparsityPlan:
  if block_sizes is None:
    return plan
  bq = block_sizes.block_q or plan.block_q
  bk = block_sizes.block_k or plan.block_k
  if (bq, bk) == (plan.block_q, plan.block_k):
    return plan
  if plan.dynamic:
    raise ValueError(f"block_sizes ({bq}, {bk}) differ from the tiles ({plan.block_q}, "
                     f"{plan.block_k}) of a dynamic plan; build the plan at those tiles")
  return plan_lib.plan_for_mask(plan.mask, block_q=bq, block_k=bk)


def _check_inputs(q, k, v, plan, backend: str) -> None:
  if not isinstance(plan, SparsityPlan):
    raise TypeError(f"plan must be a SparsityPlan, got {type(plan).__name__}")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("expected q [batch, q_len, heads, head_dim] and k, v [batch, kv_len, "
                     f"kv_heads, head_dim]; got q{q.shape} k{k.shape} v{v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got k{k.shape} v{v.shape}")
  if q.shape[0] != k.shape[0]:
    raise ValueError(f"batch differs: q{q.shape} k{k.shape}")
  if q.shape[3] != k.shape[3]:
    raise ValueError(f"head_dim differs: q{q.shape} k{k.shape}")
  b, lq, h, _ = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  if h % hkv:
    raise ValueError(f"heads={h} must be a multiple of kv_heads={hkv} (GQA)")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
  if q.dtype not in _DTYPES:
    raise ValueError(f"dtype {q.dtype} not supported; use float32, bfloat16 or float16")
  if (lq, lk) != (plan.q_len, plan.kv_len):
    raise ValueError(f"plan is for (q_len, kv_len)={(plan.q_len, plan.kv_len)}, inputs have "
                     f"{(lq, lk)}")
  bp, hp = plan.group_shape
  if bp not in (1, b):
    raise ValueError(f"plan batch dim {bp} must be 1 or batch={b}")
  if hp not in (1, hkv, h):
    raise ValueError(f"plan head dim {hp} must be 1, kv_heads={hkv} or heads={h}")
  kernel = _KERNELS.get(backend, (None,))[0]
  if kernel is tpu and (plan.block_q % 8 or plan.block_k % 8):
    raise ValueError(f"TPU tiles (block_q, block_k) must be multiples of 8 (the sublane "
                     f"count), got ({plan.block_q}, {plan.block_k})")
  if kernel is gpu:
    gpu.check_supported(q, k, plan)


def _checked_segments(segment_ids, b: int, lq: int, lk: int):
  """``segment_ids`` as a pair of int32 arrays [b, lq], [b, lk] (or None), validated."""
  if segment_ids is None:
    return None
  if not isinstance(segment_ids, (tuple, list)) or len(segment_ids) != 2:
    raise TypeError("segment_ids must be a pair (q_segment_ids [batch, q_len], "
                    f"kv_segment_ids [batch, kv_len]), got {type(segment_ids).__name__}")
  out = []
  for name, seg, length in (("q", segment_ids[0], lq), ("kv", segment_ids[1], lk)):
    seg = jnp.asarray(seg)
    if seg.shape != (b, length):
      raise ValueError(f"segment_ids[{name}] must have shape [batch, {name}_len]="
                       f"{[b, length]}, got {list(seg.shape)}")
    if not jnp.issubdtype(seg.dtype, jnp.integer):
      raise ValueError(f"segment_ids[{name}] must be integers, got {seg.dtype}")
    out.append(seg.astype(jnp.int32))
  return tuple(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _kernel_attention(q, k, v, plan, segment_ids, scale, backend):
  return _kernel_fwd(q, k, v, plan, segment_ids, scale, backend)[0]


def _kernel_fwd(q, k, v, plan, segment_ids, scale, backend):
  kernel, interpret = _KERNELS[backend]
  out, lse = kernel.forward(q, k, v, plan, scale=scale, segment_ids=segment_ids,
                            interpret=interpret)
  return (out, lse), (q, k, v, plan, segment_ids, out, lse)


def _kernel_bwd(scale, backend, res, cotangents):
  q, k, v, plan, segment_ids, out, lse = res
  dout, dlse = cotangents
  kernel, interpret = _KERNELS[backend]
  dq, dk, dv = kernel.backward(q, k, v, out, lse, dout, dlse, plan, scale=scale,
                               segment_ids=segment_ids, interpret=interpret)
  return dq, dk, dv, None, None  # plan tables and segment ids are integers: no cotangent


_kernel_attention.defvjp(_kernel_fwd, _kernel_bwd)


@functools.partial(jax.jit, static_argnames=("scale", "backend"))
def _attention(q, k, v, plan, segment_ids, *, scale: float, backend: str):
  if backend == "reference":
    return reference.attention(q, k, v, plan, scale=scale, segment_ids=segment_ids)
  heads_major = lambda x: x.transpose(0, 2, 1, 3)  # [b, T, h, d] -> [b, h, T, d]
  out, lse = _kernel_attention(heads_major(q), heads_major(k), heads_major(v), plan,
                               segment_ids, scale, backend)
  return heads_major(out), lse


def block_sparse_attention(q, k, v, plan: SparsityPlan, *, segment_ids=None,
                           scale: float | None = None, backend: str | None = None,
                           block_sizes: BlockSizes | None = None, return_lse: bool = False):
  """Multi-head (GQA) attention restricted to the tiles and elements a plan allows.

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0; same dtype as q
      (float32, bfloat16 or float16).
    plan: from :func:`plan_for_mask` or the top-k builders; (q_len, kv_len) must match.
    segment_ids: optional (q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])
      integers (splash ``SegmentIds``): an element is attended iff the plan allows it and
      its segments are equal.
    scale: logit scale, default 1/sqrt(head_dim).
    backend: None (platform default), "tpu", "tpu_interpret", "gpu", "gpu_interpret" or
      "reference".
    block_sizes: kernel tiles; a static plan is rebuilt at them.
    return_lse: also return the log-sum-exp.

  Returns:
    out [batch, q_len, heads, head_dim] in q.dtype (0 on rows with no allowed key); with
    ``return_lse``, also lse f32 [batch, heads, q_len] (natural log, -inf on such rows).
    Differentiable in q, k, v (and through lse).
  """
  backend = _default_backend() if backend is None else backend
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise TypeError(f"block_sizes must be a BlockSizes, got {type(block_sizes).__name__}")
  plan = _resolve_tiles(plan, block_sizes)
  _check_inputs(q, k, v, plan, backend)
  segment_ids = _checked_segments(segment_ids, q.shape[0], q.shape[1], k.shape[1])
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  out, lse = _attention(q, k, v, plan, segment_ids, scale=scale, backend=backend)
  return (out, lse) if return_lse else out
