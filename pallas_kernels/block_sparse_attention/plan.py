"""The sparsity plan: which KV tiles each query tile visits.

A :class:`SparsityPlan` is the one description of block sparsity that every backend consumes:
per query tile the number of KV tiles it visits, their indices in ascending order and whether
each is FULL (no masking) or PARTIAL (apply the element predicate), plus the transposed lists
for the dK/dV pass. Arrays are pytree leaves; the structural mask (whose ``predicate`` masks
partial tiles), tile sizes and lengths are static metadata, so they key the jit cache.

Leading group dims ``G = (Bp, Hp)``: ``Bp`` is 1 or the batch, ``Hp`` is 1 (pattern shared by
every head), the KV heads or the query heads (per-head top-k).

Two builders:
  * :func:`plan_for_mask` (host, numpy, lru-cached) from a :mod:`bdiff.masks` object through
    its ``tile_layout``: never an ``S x S`` array.
  * :func:`plan_from_scores` / :func:`plan_from_selection` (traced, jit-able) from runtime
    top-k key-tile selections (SparseD, arXiv 2509.24014; MoBA, arXiv 2502.13189). Capacities
    are static, so one
    compilation serves every selection of a given size.

Lengths that are not tile multiples are padded here: a tile holding padded keys is never FULL,
and the predicate is always ANDed with ``k < kv_len``, so padded keys are never attended;
padded query rows are computed and dropped by the callers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bdiff import masks as masks_lib

EMPTY, PARTIAL, FULL = masks_lib.EMPTY, masks_lib.PARTIAL, masks_lib.FULL


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["kv_count", "kv_idx", "kv_full", "q_count", "q_idx", "q_full"],
    meta_fields=["mask", "block_q", "block_k", "dynamic"])
@dataclasses.dataclass(frozen=True)
class SparsityPlan:
  """Block-sparse attention plan: per-row tile lists, as splash attention's ``MaskInfo``
  (jax-ml/jax ``splash_attention_mask_info.py``) but with FULL/PARTIAL flags per list entry.

  Attributes:
    kv_count: int32 [Bp, Hp, nq]: KV tiles visited by query tile i.
    kv_idx: int32 [Bp, Hp, nq, Kmax]: their indices, strictly ascending for j < kv_count;
      entries j >= kv_count repeat the last valid index (0 for an empty row).
    kv_full: int8 [Bp, Hp, nq, Kmax]: 1 = predicate true on the whole tile; 0 = partial (or
      padding entry).
    q_count, q_idx, q_full: the transposed lists [Bp, Hp, nk] / [Bp, Hp, nk, Qmax], same
      conventions, for the dK/dV pass.
    mask: static structural mask; its ``predicate`` (ANDed with ``k < kv_len``) masks partial
      tiles.
    block_q, block_k: static tile sizes.
    dynamic: static; True for run-time (top-k) plans, False for plans of a mask alone (which
      can be rebuilt at other tile sizes).
  """
  kv_count: Any
  kv_idx: Any
  kv_full: Any
  q_count: Any
  q_idx: Any
  q_full: Any
  mask: masks_lib.Mask
  block_q: int
  block_k: int
  dynamic: bool = False

  @property
  def q_len(self) -> int:
    return self.mask.q_len

  @property
  def kv_len(self) -> int:
    return self.mask.kv_len

  @property
  def num_q_tiles(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def num_kv_tiles(self) -> int:
    return -(-self.kv_len // self.block_k)

  @property
  def group_shape(self) -> tuple[int, int]:
    return tuple(self.kv_count.shape[:2])

  @property
  def max_kv_tiles(self) -> int:
    return self.kv_idx.shape[-1]

  @property
  def max_q_tiles(self) -> int:
    return self.q_idx.shape[-1]

  def allowed(self, q, k):
    """Element predicate of partial tiles (padding included), on integer position arrays."""
    return self.mask.predicate(q, k) & (k < self.kv_len)


def compact(sel, kind, capacity: int, xp=jnp):
  """Selected tiles of each row, ascending and padded by repetition.

  Padding repeats the last valid index so a kernel stepping past a row's count keeps the
  same block index: Pallas then issues no new DMA for those steps.

  Args:
    sel: bool [..., n]: tiles to list.
    kind: int [..., n]: tile classes; a listed tile is FULL where ``kind == FULL``.
    capacity: static row capacity K (>= the largest row count).
    xp: ``numpy`` (host plans) or ``jax.numpy`` (traced plans).

  Returns:
    (count int32 [...], idx int32 [..., K], full int8 [..., K]).
  """
  n = sel.shape[-1]
  iota = xp.arange(n, dtype=np.int32)
  count = xp.sum(sel, axis=-1, dtype=np.int32)
  keys = xp.where(sel, iota, n + iota)
  if xp is np:
    order = np.argsort(keys, axis=-1, kind="stable")
  else:
    order = jnp.argsort(keys, axis=-1, stable=True)
  if capacity > n:  # a row never holds more than n tiles; keep the static capacity anyway
    order = xp.concatenate([order, xp.broadcast_to(order[..., -1:], order.shape[:-1] + (
        capacity - n,))], axis=-1)
  order = order[..., :capacity].astype(np.int32)
  last = xp.take_along_axis(order, xp.maximum(count - 1, 0)[..., None], axis=-1)
  slot = xp.arange(capacity, dtype=np.int32)
  valid = slot < count[..., None]
  idx = xp.where(valid, order, last).astype(np.int32)
  full = (valid & (xp.take_along_axis(kind, idx, axis=-1) == FULL)).astype(np.int8)
  return count, idx, full


def tile_kinds(mask: masks_lib.Mask, block_q: int, block_k: int) -> np.ndarray:
  """``mask.tile_layout`` with tiles that hold padded keys demoted from FULL to PARTIAL."""
  kind = np.array(mask.tile_layout(block_q, block_k), dtype=np.int8)
  if mask.kv_len % block_k:
    last = kind[:, -1]
    last[last == FULL] = PARTIAL
  return kind


def _swap(x):
  return x.swapaxes(-1, -2)


@functools.lru_cache(maxsize=64)
def _static_plan(mask: masks_lib.Mask, block_q: int, block_k: int) -> SparsityPlan:
  kind = tile_kinds(mask, block_q, block_k)  # [nq, nk]
  sel = kind > EMPTY
  kmax = max(int(sel.sum(axis=1).max(initial=0)), 1)
  qmax = max(int(sel.sum(axis=0).max(initial=0)), 1)
  fwd = compact(sel, kind, kmax, xp=np)
  bwd = compact(_swap(sel), _swap(kind), qmax, xp=np)
  arrays = [a[None, None] for a in fwd + bwd]  # group dims (1, 1): shared by batch and heads
  for a in arrays:
    a.setflags(write=False)
  return SparsityPlan(*arrays, mask=mask, block_q=block_q, block_k=block_k)


def plan_for_mask(mask: masks_lib.Mask, *, block_q: int = 128,
                  block_k: int = 128) -> SparsityPlan:
  """Static plan of a :mod:`bdiff.masks` object (host side, cached, O(tiles) memory).

  Args:
    mask: any mask object (``q_len``, ``kv_len``, ``predicate``, ``tile_layout``).
    block_q, block_k: plan tile sizes (rows, columns).

  Returns:
    A :class:`SparsityPlan` with group shape (1, 1) and numpy leaves.
  """
  if not isinstance(mask, masks_lib.Mask):
    raise TypeError(f"plan_for_mask needs a bdiff.masks.Mask, got {type(mask).__name__}")
  for name, value in (("block_q", block_q), ("block_k", block_k)):
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  return _static_plan(mask, block_q, block_k)


def plan_from_selection(sel, mask: masks_lib.Mask, *, block_q: int, block_k: int,
                        capacity: int) -> SparsityPlan:
  """Plan from a traced tile selection; jit-able.

  Selected tiles are visited as FULL unless the structural mask is partial there (diagonal,
  padding); tiles where the structural mask is empty are dropped.

  Args:
    sel: bool [Bp, Hp, nq, nk]: tiles chosen at run time.
    mask: static structural mask (``bdiff.masks.Full`` for unconstrained top-k).
    block_q, block_k: tile sizes.
    capacity: static bound on selected tiles per row (Kmax).
  """
  kind = jnp.asarray(tile_kinds(mask, block_q, block_k))
  if sel.ndim != 4 or sel.shape[2:] != kind.shape:
    raise ValueError(f"selection must be [Bp, Hp, {kind.shape[0]}, {kind.shape[1]}] for "
                     f"tiles {block_q}x{block_k} of a {mask.shape} mask; got {sel.shape}")
  kind = jnp.broadcast_to(kind, sel.shape)
  sel = sel & (kind > EMPTY)
  nq = kind.shape[2]
  fwd = compact(sel, kind, capacity)
  bwd = compact(_swap(sel), _swap(kind), nq)  # padded transposed form, Qmax = nq
  return SparsityPlan(*fwd, *bwd, mask=mask, block_q=block_q, block_k=block_k, dynamic=True)


def diagonal_tiles(mask: masks_lib.Mask, block_q: int, block_k: int) -> np.ndarray:
  """bool [nq, nk]: tiles holding a query's own position (q == k), to force in top-k."""
  nq, nk = -(-mask.q_len // block_q), -(-mask.kv_len // block_k)
  q0 = np.arange(nq) * block_q
  q1 = np.minimum(q0 + block_q, mask.q_len) - 1
  k0 = np.arange(nk) * block_k
  k1 = k0 + block_k - 1
  return (k0[None] <= q1[:, None]) & (k1[None] >= q0[:, None])


def plan_from_scores(scores, mask: masks_lib.Mask, *, k: int, block_q: int = 128,
                     block_k: int = 128, forced=None) -> SparsityPlan:
  """Top-k key tiles per query tile from block importance scores; jit-able.

  Args:
    scores: float [Bp, Hp, nq, nk]: tile importance (e.g. SparseD pooled probabilities or
      MoBA ``q . mean(K_block)`` coarsened to tiles).
    mask: static structural mask; tiles it leaves empty are never chosen.
    k: static number of tiles per query tile (the capacity Kmax).
    block_q, block_k: tile sizes.
    forced: optional bool [nq, nk] (or broadcastable) of tiles always kept (own block,
      sinks); they count towards k.

  Returns:
    A :class:`SparsityPlan` with group shape ``scores.shape[:2]``.
  """
  kind = jnp.asarray(tile_kinds(mask, block_q, block_k))
  nk = kind.shape[1]
  if not 0 < k <= nk:
    raise ValueError(f"k must be in [1, {nk}] (KV tiles), got {k}")
  scores = jnp.where(kind > EMPTY, scores.astype(jnp.float32), -jnp.inf)
  if forced is not None:
    scores = jnp.where(jnp.asarray(forced) & (kind > EMPTY), jnp.inf, scores)
  top = jax.lax.top_k(scores, k)[1]  # [Bp, Hp, nq, k]
  sel = jnp.any(top[..., None] == jnp.arange(nk), axis=-2)
  return plan_from_selection(sel, mask, block_q=block_q, block_k=block_k, capacity=k)


def tile_classes(plan: SparsityPlan):
  """int8 [Bp, Hp, nq, nk] tile classes listed by the forward lists (EMPTY where unlisted)."""
  nk = plan.num_kv_tiles
  slot = jnp.arange(plan.max_kv_tiles)
  valid = slot < jnp.asarray(plan.kv_count)[..., None]
  cls = jnp.where(valid, 1 + jnp.asarray(plan.kv_full, jnp.int32), 0)  # [.., nq, Kmax]
  onehot = jnp.asarray(plan.kv_idx)[..., None] == jnp.arange(nk)  # [.., nq, Kmax, nk]
  return jnp.max(jnp.where(onehot, cls[..., None], 0), axis=-2).astype(jnp.int8)


def density(plan: SparsityPlan) -> float:
  """Listed tiles as a share of all tiles (= share of dense FLOPs the kernel computes)."""
  return float(np.mean(np.asarray(plan.kv_count))) / plan.num_kv_tiles


def allowed_pairs(plan: SparsityPlan) -> tuple[int, int]:
  """(allowed (q, k) pairs, computed tile elements), summed over the plan's groups (host).

  The first is the basis of "useful" FLOPs (work a dense kernel restricted to the mask must
  do), the second of "tile" FLOPs (what the kernel computes, partial tiles in full).
  Only partial tiles evaluate the predicate, so this stays cheap at long context.
  """
  count, idx, full = (np.asarray(x) for x in (plan.kv_count, plan.kv_idx, plan.kv_full))
  bq, bk = plan.block_q, plan.block_k
  rows = np.minimum(bq, plan.q_len - np.arange(plan.num_q_tiles) * bq)  # real rows per tile
  listed = np.arange(plan.max_kv_tiles) < count[..., None]  # [Bp, Hp, nq, Kmax]
  tiles = int(listed.sum()) * bq * bk
  pairs = int((listed & (full == 1)).sum(axis=(0, 1, 3)) @ rows * bk)
  g0, g1, i, j = np.nonzero(listed & (full == 0))
  q = (i * bq)[:, None, None] + np.arange(bq)[None, :, None]
  for start in range(0, len(i), 256):  # partial tiles in chunks: O(256 * bq * bk) memory
    sl = slice(start, start + 256)
    k = (idx[g0[sl], g1[sl], i[sl], j[sl]] * bk)[:, None, None] + np.arange(bk)[None, None]
    ok = np.asarray(plan.allowed(q[sl], k)) & (q[sl] < plan.q_len)
    pairs += int(ok.sum())
  return pairs, tiles


def pad_seq(x, multiple: int, axis: int = 2):
  """Zero-pads ``axis`` (T of the kernels' [b, h, T, d] by default) to a multiple of
  ``multiple``: the kernels' inputs to whole tiles (the plan masks the padded keys)."""
  pad = -x.shape[axis] % multiple
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths) if pad else x
