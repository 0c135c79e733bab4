"""Mosaic TPU block-sparse attention driven by a :class:`SparsityPlan`.

Design of jax's splash attention (jax-ml/jax
``jax/experimental/pallas/ops/tpu/splash_attention/splash_attention_kernel.py``), with the
online softmax and backward of FlashAttention-2 (Dao, arXiv 2307.08691): the plan tables are
scalar-prefetched into SMEM and read by the index maps, so each grid step ``(b, h, i, j)`` loads
KV tile ``kv_idx[i, j]``. Steps past a row's
count repeat the last index (no new DMA) and skip compute. Partial tiles evaluate the mask
predicate on int32 iota tiles offset by the GLOBAL tile index from the table (never the grid
index). Online softmax in natural base with f32 m/l/acc scratch; a row that saw no allowed key
writes O = 0, LSE = -inf (the empty-row contract shared by every bdiff backend).

Segment ids (splash ``SegmentIds``): optional int32 ``q_seg [b, Tq]``,
``kv_seg [b, Tk]``; an element is allowed iff the plan allows it and the segments are equal.
Each grid step loads the segment tiles of its query and KV tiles through BlockSpecs (a column
``[bq, 1]`` against a row ``[1, bk]``) and compares them in the kernel, on FULL tiles too (the
plan knows nothing of segments). Key-side segment rows are stored one row per tile
([b, n_tiles, 1, block]) so a tile's block spans the array's last two dims whatever the block.

Tile sizes: any multiple of 8 (the sublane count), not only multiples of 128. Mosaic requires
a block's last two dims to be multiples of (8, 128) or the array's whole dims; row statistics
are therefore lane-replicated columns [T, 128] (m, l, lse in the forward; lse, di for dQ) and
sublane-replicated rows per tile [n_tiles, 8, block_q] for dK/dV, as splash lays them out.
``tests/kernels/test_bsa_tpu_lowering.py`` lowers (and, with libtpu, compiles) every case.

Backward: dQ over the forward lists (same grid), dK/dV over the transposed lists with grid
``(b, kv_head, kv_tile, group, t)`` so the GQA heads of a group and the query tiles reduce
into one output block written over consecutive steps; the dK/dV body works on transposed
score tiles (kᵀ-major, as splash does) so every matmul is NN or NT.

Runs on TPU, and on CPU with ``interpret=True`` or ``pltpu.InterpretParams()``. Layout
inside: [b, heads, T, d]; lengths padded to tile multiples here (the plan masks padded keys).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention import plan as plan_lib

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: exp(MASK - MASK) is 1, not NaN
# TPU vector registers are 8 sublanes x 128 lanes. Per-row statistics (m, l, lse, di) are
# kept lane-replicated ([rows, 128]) or sublane-replicated ([8, cols]) as in jax's splash
# attention, so their tiles are whole registers for every tile size.
NUM_LANES, NUM_SUBLANES = 128, 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static kernel configuration (hashable, closed over by the kernel bodies)."""
  plan_mask: object
  kv_len: int
  block_q: int
  block_k: int
  num_q_tiles: int
  num_kv_tiles: int
  kv_capacity: int
  q_capacity: int
  plan_batch: int
  plan_heads: int
  heads: int
  kv_heads: int
  scale: float
  segments: bool = False

  @property
  def group(self) -> int:
    return self.heads // self.kv_heads

  def plan_group(self, b, h):
    """Flat (batch, head) group index into the plan tables for query head h."""
    pb = b if self.plan_batch > 1 else 0
    if self.plan_heads == 1:
      ph = 0
    elif self.plan_heads == self.heads:
      ph = h
    else:
      ph = h // self.group
    return pb * self.plan_heads + ph

  def fwd_slot(self, b, h, i, j):
    return (self.plan_group(b, h) * self.num_q_tiles + i) * self.kv_capacity + j

  def fwd_row(self, b, h, i):
    return self.plan_group(b, h) * self.num_q_tiles + i

  def bwd_slot(self, b, h, j, t):
    return (self.plan_group(b, h) * self.num_kv_tiles + j) * self.q_capacity + t

  def bwd_row(self, b, h, j):
    return self.plan_group(b, h) * self.num_kv_tiles + j

  def allowed(self, q_tile, k_tile, transposed: bool = False):
    """bool [bq, bk] ([bk, bq] if transposed): the predicate on the tile at GLOBAL tile
    indices (q_tile, k_tile), on int32 iotas (no in-kernel transpose)."""
    shape = (self.block_k, self.block_q) if transposed else (self.block_q, self.block_k)
    q_dim, k_dim = (1, 0) if transposed else (0, 1)
    q = q_tile * self.block_q + jax.lax.broadcasted_iota(jnp.int32, shape, q_dim)
    k = k_tile * self.block_k + jax.lax.broadcasted_iota(jnp.int32, shape, k_dim)
    return self.plan_mask.predicate(q, k) & (k < self.kv_len)


def _config(plan: plan_lib.SparsityPlan, heads: int, kv_heads: int, scale: float,
            segments: bool = False) -> _Config:
  return _Config(
      plan_mask=plan.mask, kv_len=plan.kv_len, block_q=plan.block_q, block_k=plan.block_k,
      num_q_tiles=plan.num_q_tiles, num_kv_tiles=plan.num_kv_tiles,
      kv_capacity=plan.max_kv_tiles, q_capacity=plan.max_q_tiles,
      plan_batch=plan.group_shape[0], plan_heads=plan.group_shape[1], heads=heads,
      kv_heads=kv_heads, scale=float(scale), segments=segments)


def _tables(plan: plan_lib.SparsityPlan):
  """Flattened int32 tables for SMEM (1-D avoids SMEM padding of trailing dims)."""
  flat = lambda x: jnp.asarray(x, jnp.int32).reshape(-1)
  return (flat(plan.kv_count), flat(plan.kv_idx), flat(plan.kv_full), flat(plan.q_count),
          flat(plan.q_idx), flat(plan.q_full))


def _params(interpret, semantics):
  return dict(interpret=interpret,
              compiler_params=pltpu.CompilerParams(dimension_semantics=semantics))


# --------------------------------------------------------------------------------------------
# Segment ids.


def _tile_rows(x, block: int, sublanes: int = 1):
  """[..., T] -> [..., T_pad // block, sublanes, block]: one row per tile, so a tile's block
  spans the array's last two dims whole (Mosaic then accepts any ``block``, not only
  multiples of 128), replicated over ``sublanes`` sublanes."""
  x = plan_lib.pad_seq(x, block, axis=x.ndim - 1)
  x = x.reshape(x.shape[:-1] + (x.shape[-1] // block, 1, block))
  return jnp.broadcast_to(x, x.shape[:-2] + (sublanes, block)) if sublanes > 1 else x


def _segment_arrays(segment_ids, bq: int, bk: int, transposed: bool = False):
  """Padded int32 segment ids laid out for tile loads: (q column [b, Tq, 1], kv rows
  [b, nk, 1, bk]), or (kv column [b, Tk, 1], q rows [b, nq, 1, bq]) for the transposed
  dK/dV pass; () without segments.

  The padding value does not matter: padded keys are masked by the plan's length predicate
  (their tiles are never FULL) and padded query rows are dropped (zero dout in backward).
  """
  if segment_ids is None:
    return ()
  q_seg, kv_seg = (x.astype(jnp.int32) for x in segment_ids)
  if transposed:
    return plan_lib.pad_seq(kv_seg, bk, axis=1)[:, :, None], _tile_rows(q_seg, bq)
  return plan_lib.pad_seq(q_seg, bq, axis=1)[:, :, None], _tile_rows(kv_seg, bk)


def _segment_specs(cfg: _Config, col_tile, row_tile, transposed: bool = False):
  """BlockSpecs of :func:`_segment_arrays` ([] without segments).

  ``col_tile`` / ``row_tile`` map (grid indices, prefetch refs) to the tile index of the
  tile's rows / columns (q / kv tiles; kv / q tiles if transposed); grid index 0 is b.
  """
  if not cfg.segments:
    return []
  rows, cols = (cfg.block_k, cfg.block_q) if transposed else (cfg.block_q, cfg.block_k)
  return [pl.BlockSpec((None, rows, 1), lambda *a: (a[0], col_tile(*a), 0)),
          pl.BlockSpec((None, None, 1, cols), lambda *a: (a[0], row_tile(*a), 0, 0))]


def _split_segments(refs, cfg: _Config):
  """(segment refs or None, the other refs) from a kernel's refs after q, k, v."""
  return (refs[:2], refs[2:]) if cfg.segments else (None, refs)


def _element_mask(cfg: _Config, seg_refs, full: bool, q_tile, k_tile, transposed=False):
  """bool tile of allowed elements ([bq, bk], or [bk, bq] if transposed); None if all are.

  The predicate runs on partial tiles only; segments, when given, on every tile.
  """
  mask = None if full else cfg.allowed(q_tile, k_tile, transposed)
  if seg_refs is not None:
    same = seg_refs[0][...] == seg_refs[1][...]  # column == row: the tile's orientation
    mask = same if mask is None else mask & same
  return mask


def _fwd_specs(cfg: _Config, d: int):
  """(q/out spec, lane-replicated row-statistic spec, kv spec, segment specs) on the
  forward grid."""
  g = cfg.group

  def q_map(b_, h_, i, j, *_):
    return b_, h_, i, 0

  def kv_tile(b_, h_, i, j, cnt_ref, idx_ref, full_ref):
    return idx_ref[cfg.fwd_slot(b_, h_, i, j)]

  def kv_map(b_, h_, i, j, *refs):
    return b_, h_ // g, kv_tile(b_, h_, i, j, *refs), 0

  return (pl.BlockSpec((None, None, cfg.block_q, d), q_map),
          pl.BlockSpec((None, None, cfg.block_q, NUM_LANES), q_map),
          pl.BlockSpec((None, None, cfg.block_k, d), kv_map),
          _segment_specs(cfg, lambda b_, h_, i, *_: i, kv_tile))


# --------------------------------------------------------------------------------------------
# Forward.


def _fwd_list_step(cnt_ref, idx_ref, full_ref, cfg: _Config):
  """Where a kernel over the forward lists (forward, dQ) stands in its grid.

  Returns the query tile i, the list position j, the global KV tile listed there (the
  predicate is offset by it, never by j), whether j is within the row's count, and whether
  that tile is full.
  """
  b, h, i, j = (pl.program_id(a) for a in range(4))
  slot = cfg.fwd_slot(b, h, i, j)
  return i, j, idx_ref[slot], j < cnt_ref[cfg.fwd_row(b, h, i)], full_ref[slot] != 0


def _fwd_kernel(cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  seg_refs, (o_ref, lse_ref, m_scr, l_scr, acc_scr) = _split_segments(refs, cfg)
  i, j, kv_tile, active, is_full = _fwd_list_step(cnt_ref, idx_ref, full_ref, cfg)

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full_like(m_scr, MASK_VALUE)
    l_scr[...] = jnp.zeros_like(l_scr)
    acc_scr[...] = jnp.zeros_like(acc_scr)

  def update(full: bool):
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * cfg.scale
    allowed = _element_mask(cfg, seg_refs, full, i, kv_tile)
    if allowed is not None:
      s = jnp.where(allowed, s, MASK_VALUE)
    m_prev = m_scr[...]  # [bq, NUM_LANES], lane-replicated
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - m_new[:, :1])
    if allowed is not None:  # a row masked so far has m_new == MASK_VALUE: exp(0) = 1 there
      p = jnp.where(allowed, p, 0.0)
    alpha = jnp.exp(m_prev - m_new)
    l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_scr[...] = alpha[:, :1] * acc_scr[...] + jax.lax.dot_general(
        p.astype(v.dtype), v, _NN, preferred_element_type=jnp.float32)
    m_scr[...] = m_new

  pl.when(active & is_full)(lambda: update(True))
  pl.when(active & jnp.logical_not(is_full))(lambda: update(False))

  @pl.when(j == cfg.kv_capacity - 1)
  def _finish():
    l = l_scr[...]
    empty = l == 0.0
    safe_l = jnp.where(empty, 1.0, l)
    out = jnp.where(empty[:, :1], 0.0, acc_scr[...] / safe_l[:, :1])
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m_scr[...] + jnp.log(safe_l))


def forward(q, k, v, plan: plan_lib.SparsityPlan, *, scale: float, segment_ids=None,
            interpret=False):
  """Forward kernel.

  Args:
    q: [b, heads, q_len, d]; k, v: [b, kv_heads, kv_len, d] (heads-major layout).
    plan: sparsity plan matching q_len / kv_len.
    scale: logit scale.
    segment_ids: optional (q_seg [b, q_len], kv_seg [b, kv_len]) integers; elements with
      different segments are masked.
    interpret: False on TPU; True or ``pltpu.InterpretParams()`` on CPU.

  Returns:
    out [b, heads, q_len, d] in q.dtype, lse f32 [b, heads, q_len].
  """
  b, h, lq, d = q.shape
  cfg = _config(plan, h, k.shape[1], scale, segment_ids is not None)
  bq, bk = cfg.block_q, cfg.block_k
  qp, kp, vp = plan_lib.pad_seq(q, bq), plan_lib.pad_seq(k, bk), plan_lib.pad_seq(v, bk)
  q_spec, row_spec, kv_spec, seg_specs = _fwd_specs(cfg, d)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3,
      grid=(b, h, cfg.num_q_tiles, cfg.kv_capacity),
      in_specs=[q_spec, kv_spec, kv_spec] + seg_specs,
      out_specs=[q_spec, row_spec],
      scratch_shapes=[pltpu.VMEM((bq, NUM_LANES), jnp.float32),
                      pltpu.VMEM((bq, NUM_LANES), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)])
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                 jax.ShapeDtypeStruct(qp.shape[:3] + (NUM_LANES,), jnp.float32)],
      name="bdiff_block_sparse_fwd",
      **_params(interpret, ("parallel", "parallel", "arbitrary", "arbitrary")),
  )(*_tables(plan)[:3], qp, kp, vp, *_segment_arrays(segment_ids, bq, bk))
  return out[:, :, :lq], lse[:, :, :lq, 0]


# --------------------------------------------------------------------------------------------
# Backward.


def _dq_kernel(cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  seg_refs, (do_ref, lse_ref, di_ref, dq_ref, dq_scr) = _split_segments(refs, cfg)
  i, j, kv_tile, active, is_full = _fwd_list_step(cnt_ref, idx_ref, full_ref, cfg)

  @pl.when(j == 0)
  def _init():
    dq_scr[...] = jnp.zeros_like(dq_scr)

  def update(full: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * cfg.scale
    p = jnp.exp(s - lse_ref[:, :1])  # lse, di: [bq, NUM_LANES], lane-replicated
    allowed = _element_mask(cfg, seg_refs, full, i, kv_tile)
    if allowed is not None:  # masked elements, and rows with lse = -inf (never unmasked)
      p = jnp.where(allowed, p, 0.0)
    dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - di_ref[:, :1])
    dq_scr[...] += jax.lax.dot_general(
        ds.astype(k.dtype), k, _NN, preferred_element_type=jnp.float32)

  pl.when(active & is_full)(lambda: update(True))
  pl.when(active & jnp.logical_not(is_full))(lambda: update(False))

  @pl.when(j == cfg.kv_capacity - 1)
  def _finish():
    dq_ref[...] = (dq_scr[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  """Works on the transposed tile sT = k·qᵀ [bk, bq] (as splash does): only NN/NT matmuls,
  with lse and di as lane-major rows [NUM_SUBLANES, bq] (sublane-replicated)."""
  seg_refs, (do_ref, lse_ref, di_ref, dk_ref, dv_ref, dk_scr, dv_scr) = _split_segments(
      refs, cfg)
  b, hk, j, r, t = (pl.program_id(a) for a in range(5))
  h = hk * cfg.group + r
  slot = cfg.bwd_slot(b, h, j, t)
  active = t < cnt_ref[cfg.bwd_row(b, h, j)]
  is_full = full_ref[slot] != 0

  @pl.when((r == 0) & (t == 0))
  def _init():
    dk_scr[...] = jnp.zeros_like(dk_scr)
    dv_scr[...] = jnp.zeros_like(dv_scr)

  def update(full: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s_t = jax.lax.dot_general(k, q, _NT, preferred_element_type=jnp.float32) * cfg.scale
    p_t = jnp.exp(s_t - lse_ref[:1, :])  # [bk, bq]
    allowed = _element_mask(cfg, seg_refs, full, idx_ref[slot], j, transposed=True)
    if allowed is not None:  # masked elements, and rows with lse = -inf (never unmasked)
      p_t = jnp.where(allowed, p_t, 0.0)
    dv_scr[...] += jax.lax.dot_general(p_t.astype(do.dtype), do, _NN,
                                       preferred_element_type=jnp.float32)
    dp_t = jax.lax.dot_general(v, do, _NT, preferred_element_type=jnp.float32)
    ds_t = p_t * (dp_t - di_ref[:1, :])
    dk_scr[...] += jax.lax.dot_general(ds_t.astype(q.dtype), q, _NN,
                                       preferred_element_type=jnp.float32)

  pl.when(active & is_full)(lambda: update(True))
  pl.when(active & jnp.logical_not(is_full))(lambda: update(False))

  @pl.when((r == cfg.group - 1) & (t == cfg.q_capacity - 1))
  def _finish():
    dk_ref[...] = (dk_scr[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward(q, k, v, out, lse, dout, dlse, plan: plan_lib.SparsityPlan, *, scale: float,
             segment_ids=None, interpret=False):
  """Gradients (dq, dk, dv) of (out, lse) = forward(q, k, v); heads-major layout.

  ``dlse`` (f32 [b, heads, q_len], may be zeros) folds into ``di``: d lse / d s = p, so
  ``ds = p * (dp - (di - dlse))`` with ``di = sum(out * dout)``. ``segment_ids`` as in
  :func:`forward`.
  """
  cfg = _config(plan, q.shape[1], k.shape[1], scale, segment_ids is not None)
  bq, bk = cfg.block_q, cfg.block_k
  di = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1) - dlse
  qp, dop = plan_lib.pad_seq(q, bq), plan_lib.pad_seq(dout.astype(q.dtype), bq)
  kp, vp = plan_lib.pad_seq(k, bk), plan_lib.pad_seq(v, bk)
  # Row statistics as columns [b, h, Tq, NUM_LANES] for dQ, as rows per query tile
  # [b, h, nq, NUM_SUBLANES, bq] for dK/dV (whose tiles are transposed).
  cols = [jnp.broadcast_to(plan_lib.pad_seq(x[..., None], bq), qp.shape[:3] + (NUM_LANES,))
          for x in (lse, di)]
  rows = [_tile_rows(x, bq, NUM_SUBLANES) for x in (lse, di)]
  tables = _tables(plan)
  dq = _dq_pass(cfg, tables[:3], (qp, kp, vp), _segment_arrays(segment_ids, bq, bk),
                (dop, *cols), interpret)
  dk, dv = _dkv_pass(cfg, tables[3:], (qp, kp, vp),
                     _segment_arrays(segment_ids, bq, bk, transposed=True),
                     (dop, *rows), interpret)
  lq, lk = q.shape[2], k.shape[2]
  return dq[:, :, :lq], dk[:, :, :lk], dv[:, :, :lk]


def _dq_pass(cfg: _Config, tables, qkv, segs, rows, interpret):
  """dQ over the forward grid and lists; ``rows`` = (dout, lse, di), lse and di as
  lane-replicated columns [b, h, Tq, NUM_LANES]."""
  qp = qkv[0]
  b, h, _, d = qp.shape
  q_spec, row_spec, kv_spec, seg_specs = _fwd_specs(cfg, d)
  return pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, h, cfg.num_q_tiles, cfg.kv_capacity),
          in_specs=[q_spec, kv_spec, kv_spec] + seg_specs + [q_spec, row_spec, row_spec],
          out_specs=q_spec, scratch_shapes=[pltpu.VMEM((cfg.block_q, d), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(qp.shape, qp.dtype),
      name="bdiff_block_sparse_dq",
      **_params(interpret, ("parallel", "parallel", "arbitrary", "arbitrary")),
  )(*tables, *qkv, *segs, *rows)


def _dkv_pass(cfg: _Config, tables, qkv, segs, rows, interpret):
  """dK/dV over the transposed lists; ``rows`` = (dout, lse, di), lse and di as
  sublane-replicated rows per query tile [b, h, nq, NUM_SUBLANES, bq]. The group heads r and
  the query tiles t reduce into one output block, written over consecutive steps."""
  kp, vp = qkv[1:]
  b, hkv, _, d = kp.shape
  bq, bk, g = cfg.block_q, cfg.block_k, cfg.group

  def q_tile(b_, hk, j, r, t, cnt_ref, idx_ref, full_ref):
    return idx_ref[cfg.bwd_slot(b_, hk * g + r, j, t)]

  def q_map(b_, hk, j, r, t, *refs):
    return b_, hk * g + r, q_tile(b_, hk, j, r, t, *refs), 0

  def row_map(b_, hk, j, r, t, *refs):
    return b_, hk * g + r, q_tile(b_, hk, j, r, t, *refs), 0, 0

  def kv_map(b_, hk, j, r, t, *_):
    return b_, hk, j, 0

  q_spec = pl.BlockSpec((None, None, bq, d), q_map)
  row_spec = pl.BlockSpec((None, None, None, NUM_SUBLANES, bq), row_map)
  kv_spec = pl.BlockSpec((None, None, bk, d), kv_map)
  seg_specs = _segment_specs(cfg, lambda b_, hk, j, *_: j, q_tile, transposed=True)
  return pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, hkv, cfg.num_kv_tiles, g, cfg.q_capacity),
          in_specs=[q_spec, kv_spec, kv_spec] + seg_specs + [q_spec, row_spec, row_spec],
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(kp.shape, kp.dtype),
                 jax.ShapeDtypeStruct(vp.shape, vp.dtype)],
      name="bdiff_block_sparse_dkv",
      **_params(interpret, ("parallel", "parallel", "arbitrary", "arbitrary", "arbitrary")),
  )(*tables, *qkv, *segs, *rows)
