"""Attention masks as objects.

One mask object drives every attention backend:

* ``predicate(q, k)`` is the element rule on integer position arrays. It uses only
  ``+ - * // & | ~`` and comparisons, so the same code runs on numpy arrays (dense reference,
  plan builder), traced ``jnp`` arrays (XLA backend) and int32 iota tiles inside Pallas kernels.
* ``dense()`` materialises the rule as a numpy bool array ``[q_len, kv_len]`` (True = may
  attend). Tests and the dense reference only: never on a hot path.
* ``tile_layout(bq, bk)`` classifies each ``bq x bk`` tile as EMPTY / PARTIAL / FULL without an
  ``S x S`` array on the fast paths (analytic for token-level masks, cell pooling for block
  masks), which is what the block-sparse kernels consume.

The rules are BD3-LM's two-stream training mask and block-causal inference mask (Arriola et al.
2025, arXiv 2503.09573; kuleshov-group/bd3lms ``models/dit.py::block_diff_mask``) and the
NBDiff variant with a token-causal clean stream (arXiv 2512.06776).
Masks are frozen dataclasses: hashable, usable as static jit arguments and cache keys.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2
_CHUNK_ELEMENTS = 1 << 22  # generic tile classification works on row chunks of this size


def _check_positive(**sizes: int) -> None:
  for name, value in sizes.items():
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_divides(block_size: int, seq_len: int, seq_name: str = "seq_len") -> None:
  if seq_len % block_size:
    raise ValueError(
        f"block_size={block_size} must divide {seq_name}={seq_len}")


class Mask:
  """Base class: subclasses define ``q_len``, ``kv_len`` and ``predicate``."""

  q_len: int
  kv_len: int

  def predicate(self, q: Any, k: Any) -> Any:
    """Elementwise rule on broadcastable integer position arrays; True = may attend."""
    raise NotImplementedError  # abstract

  @property
  def shape(self) -> tuple[int, int]:
    return (self.q_len, self.kv_len)

  def dense(self) -> np.ndarray:
    """The whole mask as a numpy bool array ``[q_len, kv_len]``."""
    q = np.arange(self.q_len, dtype=np.int64)[:, None]
    k = np.arange(self.kv_len, dtype=np.int64)[None, :]
    return np.broadcast_to(self.predicate(q, k), self.shape).copy()

  def jnp_array(self):
    """The mask as a ``jnp`` bool array (constant-folded under jit)."""
    import jax.numpy as jnp
    q = jnp.arange(self.q_len, dtype=jnp.int32)[:, None]
    k = jnp.arange(self.kv_len, dtype=jnp.int32)[None, :]
    return jnp.broadcast_to(self.predicate(q, k), self.shape)

  def tile_layout(self, bq: int, bk: int) -> np.ndarray:
    """Tile classes ``int8 [ceil(q_len/bq), ceil(kv_len/bk)]`` in {EMPTY, PARTIAL, FULL}.

    Only in-range elements count: a ragged last tile is FULL when all of its real elements are
    allowed (padding is the plan's business, not the mask's).
    """
    _check_positive(bq=bq, bk=bk)
    return _tile_layout_cached(self, bq, bk)

  def _tile_layout(self, bq: int, bk: int) -> np.ndarray:
    return _generic_tile_layout(self, bq, bk)

  def __and__(self, other: Mask) -> Mask:
    return And(self, other)


@functools.lru_cache(maxsize=256)
def _tile_layout_cached(mask: Mask, bq: int, bk: int) -> np.ndarray:
  layout = mask._tile_layout(bq, bk)  # pylint: disable=protected-access
  layout.setflags(write=False)
  return layout


def _classify(any_: np.ndarray, all_: np.ndarray) -> np.ndarray:
  return np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)


def _generic_tile_layout(mask: Mask, bq: int, bk: int) -> np.ndarray:
  """Exact classification by evaluating the predicate in row chunks: O(q_len * kv_len)."""
  nq, nk = -(-mask.q_len // bq), -(-mask.kv_len // bk)
  layout = np.empty((nq, nk), np.int8)
  k = np.arange(nk * bk)[None, :]
  k_valid = k < mask.kv_len
  rows_per_chunk = max(1, _CHUNK_ELEMENTS // (bq * nk * bk))
  for i0 in range(0, nq, rows_per_chunk):
    i1 = min(nq, i0 + rows_per_chunk)
    q = np.arange(i0 * bq, i1 * bq)[:, None]
    valid = (q < mask.q_len) & k_valid
    allowed = np.asarray(mask.predicate(q, k)) & valid
    allowed = allowed.reshape(i1 - i0, bq, nk, bk)
    valid = valid.reshape(i1 - i0, bq, nk, bk)
    any_ = allowed.any(axis=(1, 3))
    all_ = (allowed | ~valid).all(axis=(1, 3))
    layout[i0:i1] = _classify(any_, all_)
  return layout


def _cell_tile_layout(mask: Mask, cell: int, bq: int, bk: int) -> np.ndarray:
  """Tile classes of a mask that is constant on aligned ``cell x cell`` squares.

  Evaluates the predicate once per cell and pools cells into tiles (tiles that are multiples of
  the cell) or broadcasts cells over tiles (tiles that divide the cell). Other combinations fall
  back to the generic path.
  """
  if mask.q_len % cell or mask.kv_len % cell:
    return _generic_tile_layout(mask, bq, bk)
  if bq % cell == 0 and bk % cell == 0:
    coarse = _generic_tile_layout(_Scaled(mask, cell), bq // cell, bk // cell)
    return coarse
  if cell % bq == 0 and cell % bk == 0:
    cells = _generic_tile_layout(_Scaled(mask, cell), 1, 1)
    return np.repeat(np.repeat(cells, cell // bq, axis=0), cell // bk, axis=1)[
        : -(-mask.q_len // bq), : -(-mask.kv_len // bk)]
  return _generic_tile_layout(mask, bq, bk)


@dataclasses.dataclass(frozen=True)
class _Scaled(Mask):
  """A cell-uniform mask seen at cell resolution: element (i, j) is cell (i, j)."""
  base: Mask
  cell: int

  @property
  def q_len(self) -> int:  # type: ignore[override]
    return self.base.q_len // self.cell

  @property
  def kv_len(self) -> int:  # type: ignore[override]
    return self.base.kv_len // self.cell

  def predicate(self, q, k):
    return self.base.predicate(q * self.cell, k * self.cell)


def _interval_tile_layout(mask: Mask, lo_fn, hi_fn, bq: int, bk: int) -> np.ndarray:
  """Tiles of a mask whose allowed keys for query q are the interval [lo(q), hi(q)].

  lo and hi must be nondecreasing with lo <= hi, and consecutive intervals must overlap or
  touch (bounds that grow by at most one per row, as causal and sliding windows do, or a fixed
  lo, as prefixes do); then a tile's extreme rows decide whether it is full or empty, in
  O(nq * nk).
  """
  nq, nk = -(-mask.q_len // bq), -(-mask.kv_len // bk)
  q0 = np.arange(nq) * bq
  q1 = np.minimum(q0 + bq, mask.q_len) - 1
  k0 = np.arange(nk) * bk
  k1 = np.minimum(k0 + bk, mask.kv_len) - 1
  lo0, lo1 = lo_fn(q0)[:, None], lo_fn(q1)[:, None]
  hi0, hi1 = hi_fn(q0)[:, None], hi_fn(q1)[:, None]
  # Consecutive intervals overlap or touch, so the union over a tile's rows is
  # [lo(q0), hi(q1)]; a tile is full when the tightest row still covers it.
  any_ = (k0[None] <= hi1) & (k1[None] >= lo0)
  all_ = (k0[None] >= lo1) & (k1[None] <= hi0)
  return _classify(any_, all_)


# --------------------------------------------------------------------------------------------
# Token-level masks.


@dataclasses.dataclass(frozen=True)
class Full(Mask):
  """Every query attends every key."""
  q_len: int
  kv_len: int

  def __post_init__(self):
    _check_positive(q_len=self.q_len, kv_len=self.kv_len)

  def predicate(self, q, k):
    return (q >= 0) & (k >= 0)

  def _tile_layout(self, bq, bk):
    return np.full((-(-self.q_len // bq), -(-self.kv_len // bk)), FULL, np.int8)


@dataclasses.dataclass(frozen=True)
class Causal(Mask):
  """Token causal: query i (at absolute position i + q_offset) attends keys k <= i + q_offset."""
  q_len: int
  kv_len: int
  q_offset: int = 0

  def __post_init__(self):
    _check_positive(q_len=self.q_len, kv_len=self.kv_len)
    if self.q_offset < 0:
      raise ValueError(f"q_offset must be >= 0, got {self.q_offset}")

  def predicate(self, q, k):
    return k <= q + self.q_offset

  def _tile_layout(self, bq, bk):
    return _interval_tile_layout(
        self, lambda q: np.zeros_like(q), lambda q: q + self.q_offset, bq, bk)


@dataclasses.dataclass(frozen=True)
class SlidingWindow(Mask):
  """Token window: query i attends k with i+off-left <= k <= i+off+right (jax.nn convention)."""
  q_len: int
  kv_len: int
  left: int
  right: int = 0
  q_offset: int = 0

  def __post_init__(self):
    _check_positive(q_len=self.q_len, kv_len=self.kv_len)
    for name in ("left", "right", "q_offset"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

  def predicate(self, q, k):
    pos = q + self.q_offset
    return (k >= pos - self.left) & (k <= pos + self.right)

  def _tile_layout(self, bq, bk):
    return _interval_tile_layout(
        self, lambda q: q + self.q_offset - self.left,
        lambda q: q + self.q_offset + self.right, bq, bk)


# --------------------------------------------------------------------------------------------
# Block masks (predicate constant on aligned block_size x block_size cells).


@dataclasses.dataclass(frozen=True)
class BlockCausal(Mask):
  """Inference mask of block diffusion (BD3-LM, arXiv 2503.09573): blk(k) <= blk(q).

  Query i sits at absolute position ``i + q_offset`` (the cached case: a block of queries
  against a cache of ``q_offset`` tokens plus itself). Blocks count from position 0.
  """
  q_len: int
  kv_len: int
  block_size: int
  q_offset: int = 0

  def __post_init__(self):
    _check_positive(q_len=self.q_len, kv_len=self.kv_len, block_size=self.block_size)
    if self.q_offset < 0:
      raise ValueError(f"q_offset must be >= 0, got {self.q_offset}")

  def predicate(self, q, k):
    return k // self.block_size <= (q + self.q_offset) // self.block_size

  def _tile_layout(self, bq, bk):
    if self.q_offset % self.block_size:
      return _generic_tile_layout(self, bq, bk)
    return _cell_tile_layout(self, self.block_size, bq, bk)


@dataclasses.dataclass(frozen=True)
class CacheWindow(Mask):
  """A window of queries against ``[cache ; window]`` keys (the sampler's cached forward).

  Shape ``(width, cache_size + width)``. Every cache key is structurally allowed: which cache
  slots are valid differs per row and is given by segment ids (the sampler's ``kv_seg``), so
  this mask stays static. Window keys follow the block-causal rule counted from the window
  start, ``(k - cache_size) // B <= q // B``, written as ``k < cache_size + (q // B + 1) * B``
  so that no negative number is divided (kernels evaluate it on int32 tiles). With
  ``cache_size % B == 0`` it equals ``block_causal(width, cache_size + width, B,
  q_offset=cache_size)``.
  """
  width: int
  cache_size: int
  block_size: int

  def __post_init__(self):
    _check_positive(width=self.width, block_size=self.block_size)
    if not isinstance(self.cache_size, (int, np.integer)) or self.cache_size < 0:
      raise ValueError(f"cache_size must be an integer >= 0, got {self.cache_size!r}")

  @property
  def q_len(self) -> int:  # type: ignore[override]
    return self.width

  @property
  def kv_len(self) -> int:  # type: ignore[override]
    return self.cache_size + self.width

  def _last_key(self, q):
    """Last allowed key of query q: the end of q's window block (nondecreasing in q)."""
    return self.cache_size + (q // self.block_size + 1) * self.block_size - 1

  def predicate(self, q, k):
    return k <= self._last_key(q)

  def _tile_layout(self, bq, bk):
    # Allowed keys of query q are the prefix [0, last_key(q)]: with a fixed start, any
    # nondecreasing end makes a tile's extreme rows decide it, whatever the alignment.
    return _interval_tile_layout(self, np.zeros_like, self._last_key, bq, bk)


@dataclasses.dataclass(frozen=True)
class BD3Training(Mask):
  """BD3-LM two-stream training mask over ``[x_t ; x_0]`` (arXiv 2503.09573, section 3.2).

  Positions ``[0, n)`` are the noisy stream, ``[n, 2n)`` the clean stream. A noisy query of
  block b sees noisy block b (bidirectional) and clean blocks < b; a clean query of block b
  sees clean blocks <= b. With ``context_causal`` (NBDiff, arXiv 2512.06776) the clean stream is
  token-causal instead of block-causal; the noisy rules are unchanged.
  """
  seq_len: int
  block_size: int
  context_causal: bool = False

  def __post_init__(self):
    _check_positive(seq_len=self.seq_len, block_size=self.block_size)
    _check_divides(self.block_size, self.seq_len)

  @property
  def q_len(self) -> int:  # type: ignore[override]
    return 2 * self.seq_len

  @property
  def kv_len(self) -> int:  # type: ignore[override]
    return 2 * self.seq_len

  def predicate(self, q, k):
    n, b = self.seq_len, self.block_size
    qc, kc = q >= n, k >= n
    ql, kl = q - n * qc, k - n * kc  # local positions, shared by both streams
    bq, bk = ql // b, kl // b
    noisy_q = ~qc
    clean_rule = (kl <= ql) if self.context_causal else (bk <= bq)
    return (((bq == bk) & noisy_q & ~kc) | ((bk < bq) & noisy_q & kc)
            | (clean_rule & qc & kc))

  def _tile_layout(self, bq, bk):
    if self.context_causal:
      return _generic_tile_layout(self, bq, bk)
    return _cell_tile_layout(self, self.block_size, bq, bk)


@dataclasses.dataclass(frozen=True)
class And(Mask):
  """Intersection of two masks of the same shape."""
  a: Mask
  b: Mask

  def __post_init__(self):
    if self.a.shape != self.b.shape:
      raise ValueError(f"cannot intersect masks of shapes {self.a.shape} and {self.b.shape}")

  @property
  def q_len(self) -> int:  # type: ignore[override]
    return self.a.q_len

  @property
  def kv_len(self) -> int:  # type: ignore[override]
    return self.a.kv_len

  def predicate(self, q, k):
    return self.a.predicate(q, k) & self.b.predicate(q, k)

  def _tile_layout(self, bq, bk):
    la, lb = self.a.tile_layout(bq, bk), self.b.tile_layout(bq, bk)
    both_full = (la == FULL) & (lb == FULL)
    if not np.any((la == PARTIAL) & (lb == PARTIAL) | (la == PARTIAL) & (lb == FULL)
                  | (la == FULL) & (lb == PARTIAL)):
      return np.where(both_full, FULL, EMPTY).astype(np.int8)
    # Two partial tiles may intersect to nothing: only the element rule can tell.
    return _generic_tile_layout(self, bq, bk)


# --------------------------------------------------------------------------------------------
# Constructors (the public contract used by outside checks).


def full(q_len: int, kv_len: int) -> Full:
  return Full(q_len, kv_len)


def causal(q_len: int, kv_len: int | None = None, q_offset: int = 0) -> Causal:
  return Causal(q_len, q_len if kv_len is None else kv_len, q_offset)


def block_causal(q_len: int, kv_len: int, block_size: int, q_offset: int = 0) -> BlockCausal:
  """Block-causal inference mask; see :class:`BlockCausal`."""
  return BlockCausal(q_len, kv_len, block_size, q_offset)


def cache_window(width: int, cache_size: int, block_size: int) -> CacheWindow:
  """Sampler window of ``width`` queries against ``[cache ; window]``; see :class:`CacheWindow`."""
  return CacheWindow(width, cache_size, block_size)


def bd3_training(seq_len: int, block_size: int) -> BD3Training:
  """BD3-LM two-stream training mask of shape ``(2*seq_len, 2*seq_len)``."""
  return BD3Training(seq_len, block_size)


def context_causal(seq_len: int, block_size: int) -> BD3Training:
  """NBDiff two-stream mask: BD3 with a token-causal clean stream (arXiv 2512.06776)."""
  return BD3Training(seq_len, block_size, context_causal=True)


def sliding_window(q_len: int, kv_len: int, left: int, right: int = 0,
                   q_offset: int = 0) -> SlidingWindow:
  return SlidingWindow(q_len, kv_len, left, right, q_offset)


def block_starts(positions, block_size: int):
  """[b, n] row index at which each token's block begins, blocks counted from each document's
  first token (``positions`` restart at every document). The packed mask and the packed noise
  (``bdiff.diffusion.corruption.token_blocks``) both derive their blocks from this."""
  return np.arange(positions.shape[-1]) - positions % block_size


def packed_bd3_training(positions, segment_ids, block_size: int, context_causal: bool = False):
  """Two-stream training mask of packed rows, blocks counted from each document's start.

  ``positions`` [b, n] restart at 0 at every document start and ``segment_ids`` [b, n] number
  the documents of a row (``bdiff.data.segment_ids_and_positions``). A token's block is named by
  the row index where it begins, ``i - positions[i] % block_size``, so a document that starts
  mid-block gets blocks of its own, exactly as if it were trained alone; attention never
  crosses documents. With positions ``0..n-1`` and one segment this is :class:`BD3Training`.

  Works on numpy and jnp arrays (a dynamic mask: backends that need a static mask object,
  such as the Pallas kernels, cannot run it).

  Args:
    positions: [b, n] int positions within each document.
    segment_ids: [b, n] int document ids.
    block_size: diffusion block size B (need not divide the document lengths).
    context_causal: token-causal clean stream (NBDiff) instead of block-causal.

  Returns:
    [b, 2n, 2n] bool over ``[x_t ; x_0]`` (True = may attend).
  """
  _check_positive(block_size=block_size)
  n = positions.shape[-1]
  idx = np.arange(2 * n)
  clean = idx >= n
  local = idx - n * clean  # both streams share a token's position and block
  start = block_starts(positions, block_size)[:, local]  # [b, 2n]
  seg = segment_ids[:, local]
  qs, ks = start[:, :, None], start[:, None, :]
  qc, kc = clean[None, :, None], clean[None, None, :]
  clean_rule = (local[None, None, :] <= local[None, :, None]) if context_causal else ks <= qs
  rule = (~qc & ~kc & (ks == qs)) | (~qc & kc & (ks < qs)) | (qc & kc & clean_rule)
  return rule & (seg[:, :, None] == seg[:, None, :])


def segment_mask(q_segment_ids, kv_segment_ids):
  """Packed sequences: ``[b, q] x [b, kv] -> [b, q, kv]``, True where segments match.

  Works on numpy and jnp arrays; AND it with a structural mask (``attend`` does this when
  given ``segment_ids``).
  """
  return q_segment_ids[..., :, None] == kv_segment_ids[..., None, :]
