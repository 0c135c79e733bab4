"""Mosaic GPU (Hopper) block-sparse attention driven by a :class:`SparsityPlan`.

The kernels follow the FlashAttention-3 structure (Shah et al., arXiv 2407.08608) as written
for Pallas in jax's own ``jax/experimental/pallas/ops/gpu/attention_mgpu.py`` (jax-ml/jax):
one CTA per (batch element, head, tile) with one or two compute warpgroups of 64 rows each
and one memory warpgroup that fills a ``stages``-deep shared-memory ring by TMA, with a
"ready" barrier (TMA completion) and a "free" barrier (all compute warpgroups arrive) per
ring slot; every matmul is a wgmma; in the forward, two compute warpgroups ping-pong on a
schedule barrier so one's softmax overlaps the other's matmuls.

What the plan changes (the list-driven KV loop of jax-ml/jax PR #35114, "Mosaic GPU splash
attention"; list-driven GPU block sparsity also in Dao-AILab/flash-attention PR #1942): the
memory warpgroup streams only the tiles listed for the CTA's tile, reading the count and
indices as scalars from GMEM tables (GPUs have no scalar-prefetch grid spec); the compute
warpgroups apply the mask predicate only on tiles the plan marks partial, on int32 iotas
offset by the GLOBAL tile index from the table. The compute warpgroups of a CTA share its
plan row. Segment ids, when given, are compared on every tile.

* Forward (grid over query tiles, KV tiles from the forward lists): scores scaled by
  ``scale * log2(e)``, online softmax in base 2 with f32 m/l/acc; a row whose keys are all
  masked so far keeps ``m = -inf`` and is guarded (no ``inf - inf``); outputs
  ``O = acc / l`` and the natural-log ``LSE = (m + log2 l) * ln 2``; a row with no allowed
  key gives ``O = 0``, ``LSE = -inf``.
* dQ (same grid and lists): P recomputed from the LSE, ``dQ += dS K``.
* dK/dV (grid over KV tiles, query tiles from the transposed lists): transposed score tiles
  [64 keys, block_q queries] so P and dS are register A operands, ``dV += Pᵀ dO``,
  ``dK += dSᵀ Q``; computed per query head and summed over each GQA group in f32 outside
  (as the FA3 example does), which keeps the kernel deterministic.

Departures from the example, for the GPU interpreter (``plgpu.InterpretGPUParams``, which
runs these kernels on CPU in the tests):

* Matmuls accumulate into a fresh wgmma accumulator (``pl.run_scoped(..., plgpu.ACC)``)
  that is added to the running sum in registers, instead of
  ``pl.run_state(...)(plgpu.ACC.init(acc))``: the interpreter of jax 0.11.2 does not
  implement ``run_state``. The GPU cost is one f32 add per element per step.
* The interpreter reads a wgmma's A operand only from shared memory, so with
  ``p_in_smem=True`` (the default under interpretation) P and dS are staged through a
  per-warpgroup SMEM tile; on the GPU they stay in registers (an RS wgmma, as in
  FlashAttention-3). Both variants lower for CUDA, and a test-only interpreter shim runs the
  register variant too (tests/kernels/mgpu_interpret_shim.py).
* Mask predicates are re-evaluated with boolean NOT as XOR (:func:`_lowerable_predicate`):
  Mosaic GPU cannot lower NOT of a bool vector in jax 0.11.2.

Layout: [b, heads, T, d] (heads-major, as :mod:`.tpu`); lengths are padded to tile
multiples here (the plan masks padded keys; padded query rows are dropped). bf16 or f16
inputs, head_dim 64 or 128, plan tiles ``block_q`` and ``block_k`` of 64 or
128 (one or two compute warpgroups). Shared memory bounds ``stages`` (2 fits at D = 128 with
128-row tiles; 3 fits with 64-key tiles).
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
# Interpreter settings of the "gpu_interpret" backend (api.py): the kernels run on CPU.
INTERPRET = plgpu.InterpretGPUParams()
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
  dtype: object

  def wgs(self, grid_tile: str) -> int:
    """Compute warpgroups per CTA: 64 query rows ("qb": forward, dQ) or 64 keys ("kb":
    dK/dV) each."""
    return (self.block_q if grid_tile == "qb" else self.block_k) // WG_ROWS

  def allowed(self, q_start, k_start, shape, transposed: bool = False):
    """bool ``shape`` in the WGMMA layout: the plan's predicate on queries ``q_start + i``
    and keys ``k_start + j`` (queries along columns, keys along rows if ``transposed``)."""
    iota = functools.partial(plgpu.broadcasted_iota, jnp.int32, shape,
                             layout=plgpu.Layout.WGMMA)
    q_dim, k_dim = (1, 0) if transposed else (0, 1)
    q, k = iota(q_dim) + q_start, iota(k_dim) + k_start
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
  if d not in (64, 128):
    raise ValueError(f"head_dim must be 64 or 128 for the Mosaic GPU kernel (wgmma tiles of "
                     f"64; larger heads overflow shared memory at 128-row tiles), got {d}")
  if plan.block_q not in (64, 128):
    raise ValueError(f"plan block_q must be 64 or 128 (64 query rows per compute "
                     f"warpgroup) for the Mosaic GPU kernel, got {plan.block_q}")
  if plan.block_k not in (64, 128):
    raise ValueError(f"plan block_k must be 64 or 128 (64 keys per compute warpgroup in the "
                     f"dK/dV kernel) for the Mosaic GPU kernel, got {plan.block_k}")


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
# Pieces shared by the three kernels: scratch, TMA streams, masking, stores.


def _add_buffers(scratch, count: int, buffers):
  """Adds ``count`` SMEM tiles and a TMA "ready" barrier each per (name, shape, dtype, 16-bit
  wgmma operand?) entry of ``buffers``: one per compute warpgroup, or one per ring slot."""
  for name, shape, dtype, operand in buffers:
    transforms = _smem_transforms() if operand else ()
    scratch[name] = plgpu.SMEM((count,) + shape, dtype, transforms=transforms)
    scratch[name + "_ready"] = plgpu.Barrier(num_barriers=count)


def _scratch(cfg: _Config, wgs: int, own, ring, frees, a_cols: int, schedule=False):
  """Scratch of one CTA as a dict: ``own`` tiles per compute warpgroup, ``ring`` tiles per
  stage, "free" barriers per stage (all compute warpgroups arrive), the forward's schedule
  barrier (two compute warpgroups) and the SMEM A operand [64, a_cols] when ``cfg.p_in_smem``."""
  scratch = {}
  _add_buffers(scratch, wgs, own)
  _add_buffers(scratch, cfg.stages, ring)
  for name in frees:
    scratch[name] = plgpu.Barrier(num_arrivals=wgs, num_barriers=cfg.stages)
  if schedule and wgs > 1:
    scratch["schedule"] = plgpu.Barrier(num_arrivals=wgs)
  if cfg.p_in_smem:
    scratch["a"] = plgpu.SMEM((wgs, WG_ROWS, a_cols), cfg.dtype, transforms=_smem_transforms())
  return scratch


def _schedule(scr):
  """Ping-pong of the two compute warpgroups (a no-op with one)."""
  if "schedule" in scr:
    plgpu.barrier_arrive(scr["schedule"])
    plgpu.barrier_wait(scr["schedule"])


def _memory_thread(stages: int, cnt, streams, scr):
  """TMA the tiles of list entries ``j < cnt`` into the shared-memory ring, ``stages`` ahead.

  ``streams``: (source(j) -> GMEM ref view, SMEM key, free-barrier key). A slot is refilled
  once the compute warpgroups released it (its free barrier); the drain loop waits for the
  last releases too, so every completion of a free barrier is observed (the GPU
  interpreter checks that when the barriers are deallocated).
  """
  free_keys = list(dict.fromkeys(free for _, _, free in streams))

  @pl.loop(0, cnt)
  def _issue(j):
    slot = _slot(j, stages)
    waited = set()
    for source, buf, free in streams:
      if free not in waited:
        waited.add(free)
        pl.when(j >= stages)(lambda free=free: plgpu.barrier_wait(scr[free].at[slot]))
      plgpu.copy_gmem_to_smem(source(j), scr[buf].at[slot], scr[buf + "_ready"].at[slot])

  @pl.loop(jnp.maximum(cnt - stages, 0), cnt)
  def _drain(j):
    for free in free_keys:
      plgpu.barrier_wait(scr[free].at[_slot(j, stages)])


def _load_own(scr, wg, copies):
  """TMA a compute warpgroup's own tiles ((GMEM source, SMEM key) pairs) and wait."""
  for source, buf in copies:
    plgpu.copy_gmem_to_smem(source, scr[buf].at[wg], scr[buf + "_ready"].at[wg])
  for _, buf in copies:
    plgpu.barrier_wait(scr[buf + "_ready"].at[wg])


def _vector(ref, dim: int):
  """A 1-D SMEM tile as a per-row (``dim=1``) or per-column (``dim=0``) WGMMA vector."""
  return plgpu.load(ref, layout=plgpu.Layout.WGMMA.reduce(dim))


def _ring_vector(scr, buf, slot, dim: int):
  plgpu.barrier_wait(scr[buf + "_ready"].at[slot])
  return _vector(scr[buf].at[slot], dim)


def _masked_scores(cfg: _Config, s, starts, full, segs, transposed: bool = False):
  """Scores with -inf where not allowed: the predicate on partial tiles only, segment ids
  ((row ids, column ids) or None) on every tile. ``starts``: first query and key position."""
  if segs is not None:
    s = jnp.where(_rows(segs[0], s.shape) == _cols(segs[1], s.shape), s, -jnp.inf)
  return lax.cond(
      full, lambda x: x,
      lambda x: jnp.where(cfg.allowed(*starts, x.shape, transposed), x, -jnp.inf), s)


def _a_operand(cfg: _Config, x, scr, wg):
  """A register tile as a wgmma A operand: as is on the GPU, through SMEM if p_in_smem."""
  if not cfg.p_in_smem:
    return x
  ref = scr["a"].at[wg]
  ref[...] = x.astype(cfg.dtype)
  plgpu.commit_smem()
  return ref


def _store(pairs):
  """Registers -> SMEM -> GMEM for (value, SMEM ref, GMEM destination) pairs."""
  for x, smem, _ in pairs:
    smem[...] = x.astype(smem.dtype)
  plgpu.commit_smem()
  for _, smem, dst in pairs:
    plgpu.copy_smem_to_gmem(smem, dst)
  plgpu.wait_smem_to_gmem(0)


def _zeros(shape):
  layout = plgpu.Layout.WGMMA if len(shape) == 2 else plgpu.Layout.WGMMA.reduce(1)
  return plgpu.layout_cast(jnp.zeros(shape, jnp.float32), layout)


def _base2_lse(lse):
  """Natural-log LSE -> log2 units; empty rows (-inf) -> 0 (all their scores are -inf)."""
  return jnp.where(lse == -jnp.inf, 0.0, lse * _LOG2E)


def _list_kernel(cfg: _Config, tables, grid_tile: str, scr, compute, streams):
  """Role split of a CTA at grid point (b, h, i): the compute warpgroups run
  ``compute(b, h, i, wg, cnt, tile_at, full_at)``, the last warpgroup streams the tiles of
  ``streams(b, h, tile_at)`` for the ``cnt`` entries of the CTA's list."""
  cnt_ref, idx_ref, full_ref = tables
  b, h, i = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index(grid_tile)
  wg = lax.axis_index("wg")
  cnt = cnt_ref[b, h, i]
  tile_at = lambda j: idx_ref[b, h, i, j]
  full_at = lambda j: full_ref[b, h, i, j] != 0
  wgs = cfg.wgs(grid_tile)

  @pl.when(wg < wgs)
  def _compute():
    plgpu.set_max_registers(_COMPUTE_REGISTERS, action="increase")
    compute(b, h, i, wg, cnt, tile_at, full_at)

  @pl.when(wg == wgs)
  def _memory():
    plgpu.set_max_registers(_MEMORY_REGISTERS, action="decrease")
    _memory_thread(cfg.stages, cnt, streams(b, h, tile_at), scr)


# --------------------------------------------------------------------------------------------
# Forward.


def _fwd_step(cfg: _Config, j, carry, *, tables, q_seg, row0, wg, scr):
  """One listed KV tile: S = QKᵀ, mask, online softmax, acc += PV; releases the slot."""
  acc, m, l = carry
  tile_at, full_at = tables
  slot = _slot(j, cfg.stages)
  plgpu.barrier_wait(scr["k_ready"].at[slot])
  s = _wgmma(scr["q"].at[wg], scr["k"].at[slot].transpose((1, 0)), (WG_ROWS, cfg.block_k),
             after_issue=lambda: _schedule(scr))
  plgpu.barrier_arrive(scr["k_free"].at[slot])
  segs = None if q_seg is None else (q_seg, _ring_vector(scr, "kv_seg", slot, 0))
  s = _masked_scores(cfg, s * (cfg.scale * _LOG2E), (row0, tile_at(j) * cfg.block_k),
                     full_at(j), segs)
  p, m, l, acc = _softmax_step(s, m, l, acc)
  p = p.astype(cfg.dtype)
  if "schedule" in scr:
    plgpu.barrier_arrive(scr["schedule"])  # softmax done
  plgpu.barrier_wait(scr["v_ready"].at[slot])
  if "schedule" in scr:
    plgpu.barrier_wait(scr["schedule"])  # tensor cores free
  acc = acc + _wgmma(_a_operand(cfg, p, scr, wg), scr["v"].at[slot],
                     (WG_ROWS, cfg.head_dim))
  plgpu.barrier_arrive(scr["v_free"].at[slot])
  return acc, m, l


def _softmax_step(s, m, l, acc):
  """Online-softmax update in base 2 (``s`` already in log2 units); rows with ``m = -inf``
  (nothing allowed yet) subtract 0 instead of -inf, so they stay at p = 0 without NaN."""
  m_new = jnp.maximum(m, s.max(axis=1))
  m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  alpha = jnp.exp2(m - m_use)
  p = jnp.exp2(s - _rows(m_use, s.shape))
  return p, m_new, l * alpha + p.sum(axis=1), acc * _rows(alpha, acc.shape)


def _fwd_kernel(cfg: _Config, cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs):
  *seg_refs, o_ref, lse_ref, scr = refs
  q_seg_ref, kv_seg_ref = seg_refs if cfg.segments else (None, None)

  def compute(b, h, i, wg, cnt, tile_at, full_at):
    row0 = i * cfg.block_q + wg * WG_ROWS
    rows = pl.ds(row0, WG_ROWS)
    copies = [(q_ref.at[b, h, rows], "q")]
    if q_seg_ref is not None:
      copies.append((q_seg_ref.at[b, rows], "q_seg"))
    _load_own(scr, wg, copies)
    q_seg = None if q_seg_ref is None else _vector(scr["q_seg"].at[wg], 1)
    carry = (_zeros((WG_ROWS, cfg.head_dim)),
             plgpu.layout_cast(jnp.full((WG_ROWS,), -jnp.inf, jnp.float32),
                               plgpu.Layout.WGMMA.reduce(1)), _zeros((WG_ROWS,)))
    pl.when(wg == 1)(lambda: _schedule(scr))
    step = functools.partial(_fwd_step, cfg, tables=(tile_at, full_at), q_seg=q_seg,
                             row0=row0, wg=wg, scr=scr)
    acc, m, l = lax.fori_loop(0, cnt, step, carry)
    pl.when(wg == 0)(lambda: _schedule(scr))
    empty = l == 0.0  # no allowed key in the row: O = 0, LSE = -inf
    safe_l = jnp.where(empty, 1.0, l)
    out = jnp.where(_rows(empty, acc.shape), 0.0, acc / _rows(safe_l, acc.shape))
    lse = jnp.where(empty, -jnp.inf, (m + jnp.log2(safe_l)) * _LN2)
    _store([(out, scr["q"].at[wg], o_ref.at[b, h, rows]),
            (lse, scr["lse"].at[wg], lse_ref.at[b, h, rows])])

  _list_kernel(cfg, (cnt_ref, idx_ref, full_ref), "qb", scr, compute,
               functools.partial(_kv_streams, cfg, (k_ref, v_ref, kv_seg_ref),
                                 ("k_free", "v_free")))


def _kv_streams(cfg: _Config, refs, frees, b, h, tile_at):
  """K, V (and key segment ids, released with V) tiles of the listed KV tiles."""
  k_ref, v_ref, seg_ref = refs
  kv_head = lax.div(h, jnp.asarray(cfg.group, h.dtype))
  rows = lambda j: pl.ds(tile_at(j) * cfg.block_k, cfg.block_k)
  streams = [(lambda j: k_ref.at[b, kv_head, rows(j)], "k", frees[0]),
             (lambda j: v_ref.at[b, kv_head, rows(j)], "v", frees[1])]
  if seg_ref is not None:
    streams.append((lambda j: seg_ref.at[b, rows(j)], "kv_seg", frees[1]))
  return streams


def _fwd_scratch(cfg: _Config):
  wgs, bk, d = cfg.wgs("qb"), cfg.block_k, cfg.head_dim
  own = [("q", (WG_ROWS, d), cfg.dtype, True),  # Q in, then O out
         ("lse", (WG_ROWS,), jnp.float32, False)]
  ring = [("k", (bk, d), cfg.dtype, True), ("v", (bk, d), cfg.dtype, True)]
  if cfg.segments:
    own.append(("q_seg", (WG_ROWS,), jnp.int32, False))
    ring.append(("kv_seg", (bk,), jnp.int32, False))
  return _scratch(cfg, wgs, own, ring, ("k_free", "v_free"), bk, schedule=True)


def _config(plan, q, k, scale, segments, stages, p_in_smem) -> _Config:
  return _Config(mask=plan.mask, kv_len=plan.kv_len, block_q=plan.block_q,
                 block_k=plan.block_k, head_dim=q.shape[-1], group=q.shape[1] // k.shape[1],
                 scale=float(scale), stages=stages, segments=segments, p_in_smem=p_in_smem,
                 dtype=jnp.dtype(q.dtype))


def _padded_segments(segment_ids, bq: int, bk: int):
  if segment_ids is None:
    return ()
  q_seg, kv_seg = (x.astype(jnp.int32) for x in segment_ids)
  return plan_lib.pad_seq(q_seg, bq, axis=1), plan_lib.pad_seq(kv_seg, bk, axis=1)


def _call(cfg: _Config, body, out_type, scratch, grid_tile: str, num_tiles: int, interpret):
  b, h = out_type[0].shape[:2]
  return plgpu.kernel(
      functools.partial(body, cfg), out_type=out_type, scratch_types=[scratch],
      grid=(b, h, num_tiles), grid_names=("b", "h", grid_tile),
      num_threads=cfg.wgs(grid_tile) + 1, thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True), interpret=interpret)


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
  qp = plan_lib.pad_seq(q, cfg.block_q)
  kp, vp = plan_lib.pad_seq(k, cfg.block_k), plan_lib.pad_seq(v, cfg.block_k)
  tables = [_per_head(x, b, h) for x in (plan.kv_count, plan.kv_idx, plan.kv_full)]
  out_type = [jax.ShapeDtypeStruct(qp.shape, q.dtype),
              jax.ShapeDtypeStruct(qp.shape[:3], jnp.float32)]
  out, lse = _call(cfg, _fwd_kernel, out_type, _fwd_scratch(cfg), "qb", plan.num_q_tiles,
                   interpret)(*tables, qp, kp, vp,
                              *_padded_segments(segment_ids, cfg.block_q, cfg.block_k))
  return out[:, :, :lq], lse[:, :, :lq]


# --------------------------------------------------------------------------------------------
# Backward: dQ over the forward lists, dK/dV over the transposed lists.


def _dq_step(cfg: _Config, j, dq, *, tables, stats, q_seg, row0, wg, scr):
  """dQ += dS·K for one listed KV tile, with P recomputed from the LSE."""
  tile_at, full_at = tables
  slot = _slot(j, cfg.stages)
  shape = (WG_ROWS, cfg.block_k)
  plgpu.barrier_wait(scr["k_ready"].at[slot])
  s = _wgmma(scr["q"].at[wg], scr["k"].at[slot].transpose((1, 0)), shape)
  plgpu.barrier_wait(scr["v_ready"].at[slot])
  dp = _wgmma(scr["do"].at[wg], scr["v"].at[slot].transpose((1, 0)), shape)
  segs = None if q_seg is None else (q_seg, _ring_vector(scr, "kv_seg", slot, 0))
  s = _masked_scores(cfg, s * (cfg.scale * _LOG2E), (row0, tile_at(j) * cfg.block_k),
                     full_at(j), segs)
  lse2, di = stats
  ds = jnp.exp2(s - _rows(lse2, shape)) * (dp - _rows(di, shape))
  dq = dq + _wgmma(_a_operand(cfg, ds.astype(cfg.dtype), scr, wg), scr["k"].at[slot],
                   (WG_ROWS, cfg.head_dim))
  plgpu.barrier_arrive(scr["free"].at[slot])
  return dq


def _dq_kernel(cfg: _Config, cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs):
  *seg_refs, do_ref, lse_ref, di_ref, dq_ref, scr = refs
  q_seg_ref, kv_seg_ref = seg_refs if cfg.segments else (None, None)

  def compute(b, h, i, wg, cnt, tile_at, full_at):
    row0 = i * cfg.block_q + wg * WG_ROWS
    rows = pl.ds(row0, WG_ROWS)
    copies = [(q_ref.at[b, h, rows], "q"), (do_ref.at[b, h, rows], "do"),
              (lse_ref.at[b, h, rows], "lse"), (di_ref.at[b, h, rows], "di")]
    if q_seg_ref is not None:
      copies.append((q_seg_ref.at[b, rows], "q_seg"))
    _load_own(scr, wg, copies)
    stats = (_base2_lse(_vector(scr["lse"].at[wg], 1)), _vector(scr["di"].at[wg], 1))
    q_seg = None if q_seg_ref is None else _vector(scr["q_seg"].at[wg], 1)
    step = functools.partial(_dq_step, cfg, tables=(tile_at, full_at), stats=stats,
                             q_seg=q_seg, row0=row0, wg=wg, scr=scr)
    dq = lax.fori_loop(0, cnt, step, _zeros((WG_ROWS, cfg.head_dim)))
    _store([(dq * cfg.scale, scr["q"].at[wg], dq_ref.at[b, h, rows])])

  _list_kernel(cfg, (cnt_ref, idx_ref, full_ref), "qb", scr, compute,
               functools.partial(_kv_streams, cfg, (k_ref, v_ref, kv_seg_ref),
                                 ("free", "free")))


def _dq_scratch(cfg: _Config):
  bk, d = cfg.block_k, cfg.head_dim
  own = [("q", (WG_ROWS, d), cfg.dtype, True), ("do", (WG_ROWS, d), cfg.dtype, True),
         ("lse", (WG_ROWS,), jnp.float32, False), ("di", (WG_ROWS,), jnp.float32, False)]
  ring = [("k", (bk, d), cfg.dtype, True), ("v", (bk, d), cfg.dtype, True)]
  if cfg.segments:
    own.append(("q_seg", (WG_ROWS,), jnp.int32, False))
    ring.append(("kv_seg", (bk,), jnp.int32, False))
  return _scratch(cfg, cfg.wgs("qb"), own, ring, ("free",), bk)


def _dkv_step(cfg: _Config, t, carry, *, tables, kv_seg, key0, wg, scr):
  """dV += Pᵀ·dO and dK += dSᵀ·Q for one query tile of the transposed list, on transposed
  score tiles [64 keys, block_q queries] (so every A operand is a register tile)."""
  dk, dv = carry
  tile_at, full_at = tables
  slot = _slot(t, cfg.stages)
  shape = (WG_ROWS, cfg.block_q)
  plgpu.barrier_wait(scr["q_ready"].at[slot])
  s_t = _wgmma(scr["k"].at[wg], scr["q"].at[slot].transpose((1, 0)), shape)
  segs = None if kv_seg is None else (kv_seg, _ring_vector(scr, "q_seg", slot, 0))
  s_t = _masked_scores(cfg, s_t * (cfg.scale * _LOG2E), (tile_at(t) * cfg.block_q, key0),
                       full_at(t), segs, transposed=True)
  p_t = jnp.exp2(s_t - _cols(_base2_lse(_ring_vector(scr, "lse", slot, 0)), shape))
  plgpu.barrier_wait(scr["do_ready"].at[slot])
  dv = dv + _wgmma(_a_operand(cfg, p_t.astype(cfg.dtype), scr, wg), scr["do"].at[slot],
                   (WG_ROWS, cfg.head_dim))
  dp_t = _wgmma(scr["v"].at[wg], scr["do"].at[slot].transpose((1, 0)), shape)
  ds_t = p_t * (dp_t - _cols(_ring_vector(scr, "di", slot, 0), shape))
  dk = dk + _wgmma(_a_operand(cfg, ds_t.astype(cfg.dtype), scr, wg), scr["q"].at[slot],
                   (WG_ROWS, cfg.head_dim))
  plgpu.barrier_arrive(scr["free"].at[slot])
  return dk, dv


def _dkv_kernel(cfg: _Config, cnt_ref, idx_ref, full_ref, q_ref, k_ref, v_ref, *refs):
  """dK, dV of one query head's contribution (summed over the GQA group outside)."""
  *seg_refs, do_ref, lse_ref, di_ref, dk_ref, dv_ref, scr = refs
  q_seg_ref, kv_seg_ref = seg_refs if cfg.segments else (None, None)

  def compute(b, h, j, wg, cnt, tile_at, full_at):
    key0 = j * cfg.block_k + wg * WG_ROWS
    keys = pl.ds(key0, WG_ROWS)
    kv_head = lax.div(h, jnp.asarray(cfg.group, h.dtype))
    copies = [(k_ref.at[b, kv_head, keys], "k"), (v_ref.at[b, kv_head, keys], "v")]
    if kv_seg_ref is not None:
      copies.append((kv_seg_ref.at[b, keys], "kv_seg"))
    _load_own(scr, wg, copies)
    kv_seg = None if kv_seg_ref is None else _vector(scr["kv_seg"].at[wg], 1)
    step = functools.partial(_dkv_step, cfg, tables=(tile_at, full_at), kv_seg=kv_seg,
                             key0=key0, wg=wg, scr=scr)
    zeros = _zeros((WG_ROWS, cfg.head_dim))
    dk, dv = lax.fori_loop(0, cnt, step, (zeros, zeros))
    _store([(dk * cfg.scale, scr["k"].at[wg], dk_ref.at[b, h, keys]),
            (dv, scr["v"].at[wg], dv_ref.at[b, h, keys])])

  def streams(b, h, tile_at):
    rows = lambda t: pl.ds(tile_at(t) * cfg.block_q, cfg.block_q)
    out = [(lambda t, ref=ref: ref.at[b, h, rows(t)], name, "free")
           for ref, name in ((q_ref, "q"), (do_ref, "do"), (lse_ref, "lse"), (di_ref, "di"))]
    if q_seg_ref is not None:
      out.append((lambda t: q_seg_ref.at[b, rows(t)], "q_seg", "free"))
    return out

  _list_kernel(cfg, (cnt_ref, idx_ref, full_ref), "kb", scr, compute, streams)


def _dkv_scratch(cfg: _Config):
  bq, d = cfg.block_q, cfg.head_dim
  own = [("k", (WG_ROWS, d), cfg.dtype, True), ("v", (WG_ROWS, d), cfg.dtype, True)]
  ring = [("q", (bq, d), cfg.dtype, True), ("do", (bq, d), cfg.dtype, True),
          ("lse", (bq,), jnp.float32, False), ("di", (bq,), jnp.float32, False)]
  if cfg.segments:
    own.append(("kv_seg", (WG_ROWS,), jnp.int32, False))
    ring.append(("q_seg", (bq,), jnp.int32, False))
  return _scratch(cfg, cfg.wgs("kb"), own, ring, ("free",), bq)


def backward(q, k, v, out, lse, dout, dlse, plan: plan_lib.SparsityPlan, *, scale: float,
             segment_ids=None, interpret=None, stages: int = 2, p_in_smem: bool | None = None):
  """Gradients (dq, dk, dv) of (out, lse) = forward(q, k, v); heads-major layout.

  ``dlse`` (f32 [b, heads, q_len], may be zeros) folds into ``di``: d lse / d s = p, so
  ``ds = p * (dp - (di - dlse))`` with ``di = sum(out * dout)``. dK/dV are computed per
  query head and summed over each GQA group here, in f32. Other arguments as in
  :func:`forward`.
  """
  check_supported(q, k, plan)
  b, h, lq, d = q.shape
  hkv, lk = k.shape[1], k.shape[2]
  p_in_smem = interpret is not None if p_in_smem is None else p_in_smem
  cfg = _config(plan, q, k, scale, segment_ids is not None, stages, p_in_smem)
  di = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1) - dlse
  rows = [plan_lib.pad_seq(x, cfg.block_q) for x in (q, dout.astype(q.dtype))]
  rows += [plan_lib.pad_seq(x.astype(jnp.float32), cfg.block_q) for x in (lse, di)]
  kp, vp = plan_lib.pad_seq(k, cfg.block_k), plan_lib.pad_seq(v, cfg.block_k)
  segs = _padded_segments(segment_ids, cfg.block_q, cfg.block_k)
  fwd_tables = [_per_head(x, b, h) for x in (plan.kv_count, plan.kv_idx, plan.kv_full)]
  bwd_tables = [_per_head(x, b, h) for x in (plan.q_count, plan.q_idx, plan.q_full)]
  dq = _call(cfg, _dq_kernel, [jax.ShapeDtypeStruct(rows[0].shape, q.dtype)],
             _dq_scratch(cfg), "qb", plan.num_q_tiles, interpret)(
                 *fwd_tables, rows[0], kp, vp, *segs, *rows[1:])[0]
  kv_type = jax.ShapeDtypeStruct((b, h) + kp.shape[2:], k.dtype)
  dk, dv = _call(cfg, _dkv_kernel, [kv_type, kv_type], _dkv_scratch(cfg), "kb",
                 plan.num_kv_tiles, interpret)(*bwd_tables, rows[0], kp, vp, *segs, *rows[1:])
  group_sum = lambda x: x[:, :, :lk].reshape(b, hkv, h // hkv, lk, d).astype(
      jnp.float32).sum(axis=2).astype(k.dtype)
  return dq[:, :, :lq], group_sum(dk), group_sum(dv)
