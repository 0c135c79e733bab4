"""Mosaic GPU (Hopper) block-sparse attention driven by a :class:`SparsityPlan`.

The kernel follows the FlashAttention-3 structure (Shah et al., arXiv 2407.08608) as written
for Pallas in jax's own ``jax/experimental/pallas/ops/gpu/attention_mgpu.py`` (jax-ml/jax):
one CTA per (query tile, head, batch element) with ``block_q // 64`` compute warpgroups of 64
query rows each and one memory warpgroup that fills a ``stages``-deep shared-memory ring of K
and V tiles by TMA, with a "ready" barrier (TMA completion) and a "consumed" barrier (both
compute warpgroups arrive) per ring slot; QKᵀ and PV run on wgmma; with two compute
warpgroups a schedule barrier ping-pongs them so one's softmax overlaps the other's matmuls.

What the plan changes (the list-driven KV loop of jax-ml/jax PR #35114, "Mosaic GPU splash
attention"; list-driven GPU block sparsity also in Dao-AILab/flash-attention PR #1942): the
memory warpgroup visits only the query tile's listed KV tiles, reading the count and indices
as scalars from GMEM tables (GPUs have no scalar-prefetch grid spec); the compute warpgroups
apply the mask predicate only on tiles the plan marks partial, on int32 iotas offset by the
GLOBAL tile index from the table. Both compute warpgroups consume the same KV stream, so they
share the plan row of their 128-row tile. Segment ids, when given, are compared on every tile.

Numerics: scores scaled by ``scale * log2(e)``, online softmax in base 2 with f32 m/l/acc; a
row whose keys are all masked so far keeps ``m = -inf`` and is guarded (no ``inf - inf``);
outputs ``O = acc / l`` and the natural-log ``LSE = (m + log2 l) * ln 2``; a row with no
allowed key gives ``O = 0``, ``LSE = -inf``.

Two departures from the example, both for the GPU interpreter
(``plgpu.InterpretGPUParams``, which runs the kernel on CPU in tests):

* PV accumulates into a fresh wgmma accumulator (``pl.run_scoped(..., plgpu.ACC)``) that is
  added to ``acc`` in registers, instead of ``pl.run_state(...)(plgpu.ACC.init(acc))``: the
  interpreter of jax 0.11.2 does not implement ``run_state``.
* The interpreter reads a wgmma's A operand only from shared memory, so with
  ``p_in_smem=True`` (the default under interpretation) P is staged through a per-warpgroup
  SMEM tile; on the GPU P stays in registers (an RS wgmma, as in FlashAttention-3). Both
  variants lower for CUDA (tests/kernels/test_bsa_gpu_lowering.py).

Layout: [b, heads, T, d] (heads-major, as :mod:`.tpu`); lengths are padded to tile
multiples here (the plan masks padded keys; padded query rows are dropped). bf16 or f16
inputs, head_dim a multiple of 64 up to 256, tiles ``block_q`` in {64, 128} and ``block_k``
a multiple of 64 up to 256.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.block_sparse_attention import plan as plan_lib

WG_ROWS = 64  # wgmma M: query rows per compute warpgroup
DTYPES = (jnp.bfloat16, jnp.float16)
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
# Register split of the FA3 example: 2 compute warpgroups x 232 + 1 memory x 40 (x 128
# threads) fits the 64K registers of an SM.
_COMPUTE_REGISTERS, _MEMORY_REGISTERS = 232, 40


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static kernel configuration (hashable)."""
  mask: object
  kv_len: int
  block_q: int
  block_k: int
  head_dim: int
  group: int
  scale: float
  stages: int
  segments: bool
  p_in_smem: bool

  @property
  def compute_wgs(self) -> int:
    return self.block_q // WG_ROWS

  def allowed(self, row0, kv_tile, shape):
    """bool [rows, cols] in the WGMMA layout: the plan's predicate on rows ``row0 + i`` and
    keys of GLOBAL KV tile ``kv_tile``."""
    iota = functools.partial(plgpu.broadcasted_iota, jnp.int32, shape,
                             layout=plgpu.Layout.WGMMA)
    q = iota(0) + row0
    k = iota(1) + kv_tile * self.block_k
    return _lowerable_predicate(self.mask.predicate, q, k) & (k < self.kv_len)


def _lowerable_predicate(fn, q, k):
  """``fn(q, k)`` with boolean NOT evaluated as ``x ^ True``.

  Mosaic GPU's warpgroup lowering (jax 0.11.2) fails on ``not`` of a bool vector ("Register
  bitwidth in target type must be divisible by 8"), and mask predicates use ``~`` (the BD3
  two-stream rule does); XOR with True is the same function and lowers. The predicate is
  traced to a jaxpr and re-evaluated with that one substitution (also inside nested jits).
  """
  closed = jax.make_jaxpr(fn)(q, k)
  return _eval_bool_not_as_xor(closed.jaxpr, closed.consts, q, k)[0]


def _eval_bool_not_as_xor(jaxpr, consts, *args):
  env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    if eqn.primitive is lax.not_p and eqn.invars[0].aval.dtype == jnp.bool_:
      outs = [lax.bitwise_xor(ins[0], jnp.ones_like(ins[0]))]
    elif isinstance(eqn.params.get("jaxpr"), jex_core.ClosedJaxpr):  # a nested jit
      sub = eqn.params["jaxpr"]
      outs = _eval_bool_not_as_xor(sub.jaxpr, sub.consts, *ins)
    else:
      outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def check_supported(q, k, plan: plan_lib.SparsityPlan) -> None:
  """ValueError naming what the Mosaic GPU kernel does not support."""
  d = q.shape[-1]
  if q.dtype not in DTYPES:
    raise ValueError(f"the Mosaic GPU kernel needs bfloat16 or float16 inputs (wgmma), got "
                     f"{q.dtype}")
  if d % 64 or d > 256:
    raise ValueError(f"head_dim must be a multiple of 64 up to 256 for the Mosaic GPU kernel, "
                     f"got {d}")
  if plan.block_q not in (64, 128):
    raise ValueError(f"plan block_q must be 64 or 128 (64 query rows per compute "
                     f"warpgroup) for the Mosaic GPU kernel, got {plan.block_q}")
  if plan.block_k % 64 or plan.block_k > 256:
    raise ValueError(f"plan block_k must be a multiple of 64 up to 256 for the Mosaic GPU "
                     f"kernel, got {plan.block_k}")


def _pad_seq(x, multiple: int, axis: int = 2):
  pad = -x.shape[axis] % multiple
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths) if pad else x


def _per_head(x, b: int, h: int):
  """Plan table [Bp, Hp, ...] -> int32 [b, h, ...] indexed by batch and QUERY head.

  Hp is 1, the KV heads or the query heads; query head ``hh`` of a GQA group uses KV-head
  row ``hh // (h // Hp)``. The GMEM copy costs O(b·h·nq·Kmax) int32, small next to Q.
  """
  x = jnp.asarray(x, jnp.int32)
  if x.shape[1] not in (1, h):
    x = jnp.repeat(x, h // x.shape[1], axis=1)
  return jnp.broadcast_to(x, (b, h) + x.shape[2:])


def _smem_transforms():
  """Tiling + 128-byte swizzle of 16-bit wgmma operands (64 elements per swizzle row)."""
  return (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def _wgmma(a, b, shape, after_issue=None):
  """f32 ``a @ b`` on a fresh wgmma accumulator; ``a`` is an SMEM ref or registers, ``b`` an
  SMEM ref. ``after_issue`` runs while the wgmma is in flight (the schedule barrier)."""
  def body(acc_ref):
    plgpu.wgmma(acc_ref, a, b)
    if after_issue is not None:
      after_issue()
    return acc_ref[...]
  return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


def _rows(x, shape):
  """Per-row vector [rows] -> [rows, cols] (WGMMA layout)."""
  return lax.broadcast_in_dim(x, shape, [0])


def _cols(x, shape):
  """Per-column vector [cols] -> [rows, cols] (WGMMA layout)."""
  return lax.broadcast_in_dim(x, shape, [1])


def _slot(j, stages: int):
  return lax.rem(j, jnp.asarray(stages, j.dtype))


# --------------------------------------------------------------------------------------------
# Forward.


def _fwd_scratch(cfg: _Config, dtype):
  """Shared-memory buffers and barriers of one CTA, as a dict (the kernel's last argument)."""
  wgs, s, bk, d = cfg.compute_wgs, cfg.stages, cfg.block_k, cfg.head_dim
  tr = _smem_transforms()
  scratch = {
      "q": plgpu.SMEM((wgs, WG_ROWS, d), dtype, transforms=tr),  # Q in, then O out
      "k": plgpu.SMEM((s, bk, d), dtype, transforms=tr),
      "v": plgpu.SMEM((s, bk, d), dtype, transforms=tr),
      "lse": plgpu.SMEM((wgs, WG_ROWS), jnp.float32),
      "q_ready": plgpu.Barrier(num_barriers=wgs),
      "k_ready": plgpu.Barrier(num_barriers=s),
      "v_ready": plgpu.Barrier(num_barriers=s),
      "k_free": plgpu.Barrier(num_arrivals=wgs, num_barriers=s),
      "v_free": plgpu.Barrier(num_arrivals=wgs, num_barriers=s),
  }
  if wgs > 1:
    scratch["schedule"] = plgpu.Barrier(num_arrivals=wgs)
  if cfg.p_in_smem:
    scratch["p"] = plgpu.SMEM((wgs, WG_ROWS, bk), dtype, transforms=tr)
  if cfg.segments:
    scratch["q_seg"] = plgpu.SMEM((wgs, WG_ROWS), jnp.int32)
    scratch["kv_seg"] = plgpu.SMEM((s, bk), jnp.int32)
    scratch["q_seg_ready"] = plgpu.Barrier(num_barriers=wgs)
    scratch["kv_seg_ready"] = plgpu.Barrier(num_barriers=s)
  return scratch


def _schedule(scr):
  """Ping-pong of the two compute warpgroups (a no-op with one)."""
  if "schedule" in scr:
    plgpu.barrier_arrive(scr["schedule"])
    plgpu.barrier_wait(scr["schedule"])


def _memory_thread(cfg: _Config, cnt, tile_at, kv_srcs, scr):
  """TMA the listed KV tiles (and their segment ids) into the ring, ``stages`` ahead.

  A slot is refilled once both compute warpgroups released it; the drain loop waits for the
  last releases too, so every completion of a "free" barrier is observed (the GPU
  interpreter checks that when the barriers are deallocated).
  """
  bk, stages = cfg.block_k, cfg.stages
  k_src, v_src, seg_src = kv_srcs

  @pl.loop(0, cnt)
  def _issue(j):
    slot = _slot(j, stages)
    rows = pl.ds(tile_at(j) * bk, bk)
    reuse = j >= stages
    pl.when(reuse)(lambda: plgpu.barrier_wait(scr["k_free"].at[slot]))
    plgpu.copy_gmem_to_smem(k_src.at[rows], scr["k"].at[slot], scr["k_ready"].at[slot])
    pl.when(reuse)(lambda: plgpu.barrier_wait(scr["v_free"].at[slot]))
    plgpu.copy_gmem_to_smem(v_src.at[rows], scr["v"].at[slot], scr["v_ready"].at[slot])
    if seg_src is not None:  # read with the scores, released with V
      plgpu.copy_gmem_to_smem(seg_src.at[rows], scr["kv_seg"].at[slot],
                              scr["kv_seg_ready"].at[slot])

  @pl.loop(jnp.maximum(cnt - stages, 0), cnt)
  def _drain(j):
    slot = _slot(j, stages)
    plgpu.barrier_wait(scr["k_free"].at[slot])
    plgpu.barrier_wait(scr["v_free"].at[slot])


def _masked_scores(cfg: _Config, s, row0, kv_tile, full, q_seg, scr, slot):
  """Scores with -inf where not allowed: the predicate on partial tiles only, segment ids on
  every tile."""
  if q_seg is not None:
    plgpu.barrier_wait(scr["kv_seg_ready"].at[slot])
    kv_seg = plgpu.load(scr["kv_seg"].at[slot], layout=plgpu.Layout.WGMMA.reduce(0))
    s = jnp.where(_rows(q_seg, s.shape) == _cols(kv_seg, s.shape), s, -jnp.inf)
  return lax.cond(full, lambda x: x,
                  lambda x: jnp.where(cfg.allowed(row0, kv_tile, x.shape), x, -jnp.inf), s)


def _softmax_step(s, m, l, acc):
  """Online-softmax update in base 2 (``s`` already in log2 units); rows with ``m = -inf``
  (nothing allowed yet) subtract 0 instead of -inf, so they stay at p = 0 without NaN."""
  m_new = jnp.maximum(m, s.max(axis=1))
  m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  alpha = jnp.exp2(m - m_use)
  p = jnp.exp2(s - _rows(m_use, s.shape))
  return p, m_new, l * alpha + p.sum(axis=1), acc * _rows(alpha, acc.shape)


def _fwd_step(cfg: _Config, j, carry, *, tables, q_smem, q_seg, row0, wg, scr):
  """One listed KV tile: S = QKᵀ, mask, online softmax, acc += PV; releases the slot."""
  acc, m, l = carry
  tile_at, full_at = tables
  slot = _slot(j, cfg.stages)
  kv_tile = tile_at(j)
  plgpu.barrier_wait(scr["k_ready"].at[slot])
  s = _wgmma(q_smem, scr["k"].at[slot].transpose((1, 0)), (WG_ROWS, cfg.block_k),
             after_issue=lambda: _schedule(scr))
  plgpu.barrier_arrive(scr["k_free"].at[slot])
  s = _masked_scores(cfg, s * (cfg.scale * _LOG2E), row0, kv_tile, full_at(j), q_seg, scr,
                     slot)
  p, m, l, acc = _softmax_step(s, m, l, acc)
  p = p.astype(q_smem.dtype)
  if "schedule" in scr:
    plgpu.barrier_arrive(scr["schedule"])  # softmax done
  plgpu.barrier_wait(scr["v_ready"].at[slot])
  if "schedule" in scr:
    plgpu.barrier_wait(scr["schedule"])  # tensor cores free
  if cfg.p_in_smem:
    p_smem = scr["p"].at[wg]
    p_smem[...] = p
    plgpu.commit_smem()
    p = p_smem
  acc = acc + _wgmma(p, scr["v"].at[slot], (WG_ROWS, cfg.head_dim))
  plgpu.barrier_arrive(scr["v_free"].at[slot])
  return acc, m, l


def _compute_thread(cfg: _Config, cnt, tables, io, scr, row0, wg):
  """Query rows ``row0 + [0, 64)``: load Q, run the listed KV tiles, write O and LSE."""
  q_src, seg_src, o_dst, lse_dst = io
  q_smem = scr["q"].at[wg]
  plgpu.copy_gmem_to_smem(q_src, q_smem, scr["q_ready"].at[wg])
  q_seg = None
  if seg_src is not None:
    plgpu.copy_gmem_to_smem(seg_src, scr["q_seg"].at[wg], scr["q_seg_ready"].at[wg])
    plgpu.barrier_wait(scr["q_seg_ready"].at[wg])
    q_seg = plgpu.load(scr["q_seg"].at[wg], layout=plgpu.Layout.WGMMA.reduce(1))
  plgpu.barrier_wait(scr["q_ready"].at[wg])
  row_layout = plgpu.Layout.WGMMA.reduce(1)
  m = plgpu.layout_cast(jnp.full((WG_ROWS,), -jnp.inf, jnp.float32), row_layout)
  l = plgpu.layout_cast(jnp.full((WG_ROWS,), 0.0, jnp.float32), row_layout)
  acc = plgpu.layout_cast(jnp.full((WG_ROWS, cfg.head_dim), 0.0, jnp.float32),
                          plgpu.Layout.WGMMA)
  pl.when(wg == 1)(lambda: _schedule(scr))
  step = functools.partial(_fwd_step, cfg, tables=tables, q_smem=q_smem, q_seg=q_seg,
                           row0=row0, wg=wg, scr=scr)
  acc, m, l = lax.fori_loop(0, cnt, step, (acc, m, l))
  pl.when(wg == 0)(lambda: _schedule(scr))
  empty = l == 0.0  # no allowed key in the row: O = 0, LSE = -inf
  safe_l = jnp.where(empty, 1.0, l)
  q_smem[...] = jnp.where(_rows(empty, acc.shape), 0.0,
                          acc / _rows(safe_l, acc.shape)).astype(q_smem.dtype)
  scr["lse"].at[wg][...] = jnp.where(empty, -jnp.inf, (m + jnp.log2(safe_l)) * _LN2)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(q_smem, o_dst)
  plgpu.copy_smem_to_gmem(scr["lse"].at[wg], lse_dst)
  plgpu.wait_smem_to_gmem(0)


def _fwd_kernel(cfg: _Config, cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs):
  *seg_refs, o_ref, lse_ref, scr = refs
  q_seg_ref, kv_seg_ref = seg_refs if cfg.segments else (None, None)
  b, h, i = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("qb")
  wg = lax.axis_index("wg")
  cnt = cnt_ref[b, h, i]
  tile_at = lambda j: idx_ref[b, h, i, j]
  full_at = lambda j: full_ref[b, h, i, j] != 0

  @pl.when(wg < cfg.compute_wgs)
  def _compute():
    plgpu.set_max_registers(_COMPUTE_REGISTERS, action="increase")
    row0 = i * cfg.block_q + wg * WG_ROWS
    rows = pl.ds(row0, WG_ROWS)
    io = (q_ref.at[b, h, rows], None if q_seg_ref is None else q_seg_ref.at[b, rows],
          o_ref.at[b, h, rows], lse_ref.at[b, h, rows])
    _compute_thread(cfg, cnt, (tile_at, full_at), io, scr, row0, wg)

  @pl.when(wg == cfg.compute_wgs)
  def _memory():
    plgpu.set_max_registers(_MEMORY_REGISTERS, action="decrease")
    kv_head = lax.div(h, jnp.asarray(cfg.group, h.dtype))
    srcs = (k_ref.at[b, kv_head], v_ref.at[b, kv_head],
            None if kv_seg_ref is None else kv_seg_ref.at[b])
    _memory_thread(cfg, cnt, tile_at, srcs, scr)


def _config(plan, q, k, scale, segments, stages, p_in_smem) -> _Config:
  return _Config(mask=plan.mask, kv_len=plan.kv_len, block_q=plan.block_q,
                 block_k=plan.block_k, head_dim=q.shape[-1], group=q.shape[1] // k.shape[1],
                 scale=float(scale), stages=stages, segments=segments, p_in_smem=p_in_smem)


def _padded_segments(segment_ids, bq: int, bk: int):
  if segment_ids is None:
    return ()
  q_seg, kv_seg = (x.astype(jnp.int32) for x in segment_ids)
  return _pad_seq(q_seg, bq, axis=1), _pad_seq(kv_seg, bk, axis=1)


def forward(q, k, v, plan: plan_lib.SparsityPlan, *, scale: float, segment_ids=None,
            interpret=None, stages: int = 2, p_in_smem: bool | None = None):
  """Forward kernel.

  Args:
    q: [b, heads, q_len, d]; k, v: [b, kv_heads, kv_len, d] (heads-major), bf16 or f16.
    plan: sparsity plan matching q_len / kv_len (tiles: see :func:`check_supported`).
    scale: logit scale.
    segment_ids: optional (q_seg [b, q_len], kv_seg [b, kv_len]) integers; elements with
      different segments are masked.
    interpret: None on the GPU; ``plgpu.InterpretGPUParams()`` to run on CPU.
    stages: depth of the K/V shared-memory ring.
    p_in_smem: stage P through shared memory for the PV wgmma; default: only when
      interpreting (see the module docstring).

  Returns:
    out [b, heads, q_len, d] in q.dtype, lse f32 [b, heads, q_len] (natural log).
  """
  check_supported(q, k, plan)
  b, h, lq, d = q.shape
  p_in_smem = interpret is not None if p_in_smem is None else p_in_smem
  cfg = _config(plan, q, k, scale, segment_ids is not None, stages, p_in_smem)
  qp = _pad_seq(q, cfg.block_q)
  kp, vp = _pad_seq(k, cfg.block_k), _pad_seq(v, cfg.block_k)
  tables = [_per_head(x, b, h) for x in (plan.kv_count, plan.kv_idx, plan.kv_full)]
  out, lse = plgpu.kernel(
      functools.partial(_fwd_kernel, cfg),
      out_type=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                jax.ShapeDtypeStruct(qp.shape[:3], jnp.float32)],
      scratch_types=[_fwd_scratch(cfg, q.dtype)],
      grid=(b, h, plan.num_q_tiles), grid_names=("b", "h", "qb"),
      num_threads=cfg.compute_wgs + 1, thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interpret,
  )(*tables, qp, kp, vp, *_padded_segments(segment_ids, cfg.block_q, cfg.block_k))
  return out[:, :, :lq], lse[:, :, :lq]
