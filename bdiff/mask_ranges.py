"""Mask objects in the per-row key-range form of tokamax's attention ``Mask``.

tokamax (openxla/tokamax, ``tokamax/_src/ops/attention/base.py``) describes a mask as the
intersection of three optional parts:

* ``k_start`` / ``k_end``: query row ``q`` may attend keys ``k_start[q] <= k < k_end[q]``;
* a ``CausalMask(offset, window_size)``: ``k <= q + offset`` and, with a window,
  ``k > q + offset - window_size``;
* a dense ``bool_mask``.

Its Mosaic GPU forward skips the key tiles outside ``[min k_start, max k_end)`` of a query tile
and its kernels special-case the plain causal mask (offset 0, no window), so the range and
causal parts are what make it fast; the bool mask costs a dense ``[q, kv]`` read.

:func:`to_ranges` translates every :mod:`bdiff.masks` object exactly, never approximately:

* causal and sliding-window masks become a ``CausalMask`` (plain causal keeps tokamax's fast
  path);
* block-causal and cache-window masks allow a prefix of the keys per row, so ``k_end`` alone;
* any other mask (BD3-LM two-stream training, NBDiff context-causal: a noisy query sees its own
  noisy block *and* earlier clean blocks, two disjoint key intervals) is evaluated densely: rows
  whose keys are one interval need only their range, otherwise the dense rule goes in
  ``bool_mask`` and each row's range is the tightest interval around its keys, so tokamax's
  tile skipping still applies;
* intersections intersect their parts' forms (evaluated densely where a part needs a bool
  mask, so that the ranges stay tight).

Pure numpy; tokamax itself is not needed here.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from bdiff import masks as masks_lib


@dataclasses.dataclass(frozen=True, eq=False)
class RangeForm:
  """A ``q_len x kv_len`` mask as tokamax's parts; (q, k) is allowed iff every part allows it.

  Attributes:
    k_start, k_end: int32 ``[q_len]`` key range per query row (None: 0 / kv_len).
    causal_offset: ``k <= q + causal_offset`` (None: no causal part).
    causal_window: with a causal part, ``k > q + causal_offset - causal_window`` (None: no
      lower bound).
    bool_mask: bool ``[q_len, kv_len]`` (None: no dense part).
  """
  q_len: int
  kv_len: int
  k_start: np.ndarray | None = None
  k_end: np.ndarray | None = None
  causal_offset: int | None = None
  causal_window: int | None = None
  bool_mask: np.ndarray | None = None

  def __post_init__(self):
    for name in ("k_start", "k_end", "bool_mask"):
      if getattr(self, name) is not None:  # forms are cached: keep them immutable
        getattr(self, name).setflags(write=False)

  def row_bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``[lo, hi)`` of the range and causal parts together, clipped to the keys."""
    q = np.arange(self.q_len, dtype=np.int64)
    lo = np.zeros(self.q_len, np.int64) if self.k_start is None else self.k_start.astype(np.int64)
    hi = np.full(self.q_len, self.kv_len, np.int64) if self.k_end is None else (
        self.k_end.astype(np.int64))
    if self.causal_offset is not None:
      hi = np.minimum(hi, q + self.causal_offset + 1)
      if self.causal_window is not None:
        lo = np.maximum(lo, q + self.causal_offset - self.causal_window + 1)
    return np.clip(lo, 0, self.kv_len), np.clip(hi, 0, self.kv_len)

  def rows_with_key(self) -> np.ndarray:
    """bool ``[q_len]``: the rows that allow at least one key."""
    lo, hi = self.row_bounds()
    if self.bool_mask is None:
      return lo < hi
    k = np.arange(self.kv_len)[None, :]
    return np.any(self.bool_mask & (k >= lo[:, None]) & (k < hi[:, None]), axis=1)

  def opened(self, rows: np.ndarray) -> RangeForm:
    """The same mask with every key allowed on ``rows`` (bool ``[q_len]``), other rows exact.

    The causal part is folded into the ranges first, since it cannot differ per row.
    """
    lo, hi = self.row_bounds()
    bool_mask = None if self.bool_mask is None else self.bool_mask | rows[:, None]
    return RangeForm(self.q_len, self.kv_len, k_start=np.where(rows, 0, lo).astype(np.int32),
                     k_end=np.where(rows, self.kv_len, hi).astype(np.int32),
                     bool_mask=bool_mask)

  def __and__(self, other: RangeForm) -> RangeForm:
    if (self.q_len, self.kv_len) != (other.q_len, other.kv_len):
      raise ValueError(f"cannot intersect forms of shapes {(self.q_len, self.kv_len)} and "
                       f"{(other.q_len, other.kv_len)}")
    both = lambda a, b, fn: a if b is None else b if a is None else fn(a, b)
    offset, window = _causal_and((self.causal_offset, self.causal_window),
                                 (other.causal_offset, other.causal_window))
    return RangeForm(self.q_len, self.kv_len,
                     k_start=both(self.k_start, other.k_start, np.maximum),
                     k_end=both(self.k_end, other.k_end, np.minimum),
                     causal_offset=offset, causal_window=window,
                     bool_mask=both(self.bool_mask, other.bool_mask, np.logical_and))


def _causal_and(a, b):
  """Intersection of two causal parts (offset, window): the lower upper bound and the higher
  lower bound, the rule of tokamax's ``CausalMask.__and__``."""
  if a[0] is None or b[0] is None:
    return a if b[0] is None else b
  offset = min(a[0], b[0])
  lower = [o - w for o, w in (a, b) if w is not None]  # k > lower
  return offset, (offset - max(lower)) if lower else None


def _prefix(mask: masks_lib.Mask, last_key: np.ndarray) -> RangeForm:
  """Rows that allow the keys ``[0, last_key]``: k_end alone."""
  k_end = np.clip(last_key + 1, 0, mask.kv_len).astype(np.int32)
  return RangeForm(mask.q_len, mask.kv_len, k_end=k_end)


def _from_dense(mask: masks_lib.Mask) -> RangeForm:
  """Any mask, from its dense rule: each row's tightest key interval, plus the dense rule where
  some row's keys are not one interval."""
  allowed = mask.dense()
  any_key = allowed.any(axis=1)
  lo = np.where(any_key, allowed.argmax(axis=1), 0)
  hi = np.where(any_key, mask.kv_len - allowed[:, ::-1].argmax(axis=1), 0)
  contiguous = np.array_equal(allowed.sum(axis=1), hi - lo)
  return RangeForm(mask.q_len, mask.kv_len, k_start=lo.astype(np.int32),
                   k_end=hi.astype(np.int32), bool_mask=None if contiguous else allowed)


def to_ranges(mask: masks_lib.Mask) -> RangeForm:
  """The exact tokamax form of a :mod:`bdiff.masks` object (cached: masks are hashable).

  Raises:
    TypeError: ``mask`` is not a :class:`bdiff.masks.Mask`.
  """
  if not isinstance(mask, masks_lib.Mask):
    raise TypeError(f"to_ranges needs a bdiff.masks.Mask, got {type(mask).__name__}")
  return _to_ranges(mask)


@functools.lru_cache(maxsize=64)
def _to_ranges(mask: masks_lib.Mask) -> RangeForm:
  q = np.arange(mask.q_len, dtype=np.int64)
  if isinstance(mask, masks_lib.Full):
    return RangeForm(mask.q_len, mask.kv_len)
  if isinstance(mask, masks_lib.Causal):
    return RangeForm(mask.q_len, mask.kv_len, causal_offset=mask.q_offset)
  if isinstance(mask, masks_lib.SlidingWindow):
    # pos - left <= k <= pos + right with pos = q + q_offset.
    return RangeForm(mask.q_len, mask.kv_len, causal_offset=mask.q_offset + mask.right,
                     causal_window=mask.left + mask.right + 1)
  if isinstance(mask, masks_lib.BlockCausal):
    b = mask.block_size
    return _prefix(mask, ((q + mask.q_offset) // b + 1) * b - 1)
  if isinstance(mask, masks_lib.CacheWindow):
    return _prefix(mask, mask.cache_size + (q // mask.block_size + 1) * mask.block_size - 1)
  if isinstance(mask, masks_lib.And):
    both = _to_ranges(mask.a) & _to_ranges(mask.b)
    # With a dense part, the intersected ranges may be looser than the rows' keys: evaluating
    # the whole rule (dense anyway) makes them tight again.
    return both if both.bool_mask is None else _from_dense(mask)
  return _from_dense(mask)
