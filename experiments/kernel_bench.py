"""Block-sparse attention benchmark: bdiff masks through every attention kernel available.

Counted ("useful") TFLOP/s = 4·D·(allowed pairs)·B·H per forward, forward+backward counted as
3.5× forward (the backward pass is 2.5× the forward's matmul FLOPs, the convention of
FlashAttention-2, Dao, arXiv 2307.08691); for the bdiff kernel also "tile" TFLOP/s over the
computed tiles. Timing: median wall-clock of ``--iters`` jitted calls after one warm-up call
(compilation excluded), each synchronised with ``block_until_ready``.

Kernels timed where they exist: the bdiff kernel (TPU; interpret mode only in ``--smoke``),
cuDNN (GPU: ``is_causal`` for the causal mask, the explicit boolean mask for all), tokamax's
Mosaic GPU flash attention (GPU, with the optional ``tokamax`` package; every mask object, in
its exact per-row key-range form, so not the top-k plan), XLA (dense, up to ``--xla-max-len``),
jax splash attention (TPU). A kernel that cannot run here is skipped with the reason printed.
After the table, each kernel's time relative to the bdiff kernel's (> 1: bdiff is faster).

  python -m experiments.kernel_bench --out docs/kernel_bench_h100.md   # GPU or TPU
  python -m experiments.kernel_bench --smoke                           # CPU, < 30 s

Hardware: H100 / TPU for real numbers (minutes); any CPU for ``--smoke``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from bdiff import attention, mask_ranges, masks
from pallas_kernels.block_sparse_attention import api
from pallas_kernels.block_sparse_attention import plan as plan_lib
from pallas_kernels.block_sparse_attention import reference

MASK_NAMES = ("causal", "block_causal_4", "block_causal_16", "block_causal_64", "bd3_16",
              "topk")


def make_plan(name: str, seq_len: int, batch: int, heads: int, tile: int, topk_share: float):
  """(mask object or None, plan) for a benchmark mask at total length seq_len."""
  if name == "causal":
    mask = masks.causal(seq_len)
  elif name.startswith("block_causal_"):
    mask = masks.block_causal(seq_len, seq_len, int(name.rsplit("_", 1)[1]))
  elif name.startswith("bd3_"):
    mask = masks.bd3_training(seq_len // 2, int(name.rsplit("_", 1)[1]))
  elif name == "topk":  # SparseD-like: causal structure, own tile forced, k tiles per row
    structure = masks.causal(seq_len)
    nk = -(-seq_len // tile)
    scores = jax.random.uniform(jax.random.key(0), (batch, heads, nk, nk))
    plan = plan_lib.plan_from_scores(
        scores, structure, k=max(1, int(nk * topk_share)), block_q=tile, block_k=tile,
        forced=plan_lib.diagonal_tiles(structure, tile, tile))
    return None, plan
  else:
    raise ValueError(f"unknown mask {name!r}; choose from {MASK_NAMES}")
  return mask, api.plan_for_mask(mask, block_q=tile, block_k=tile)


def time_fn(fn, args, iters: int) -> float:
  """Median seconds per call of a jitted fn after a warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def with_backward(attn):
  """fwd+bwd: gradients of sum(out * w) w.r.t. q, k, v."""
  def f(q, k, v, w):
    return jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32) * w),
                    argnums=(0, 1, 2))(q, k, v)
  return f


def kernels_for(platform: str, mask, plan, args):
  """name -> builder of an attention fn(q, k, v), for every kernel on this platform.

  Builders run inside the benchmark's error handling: dense baselines may not fit.
  """
  out = {}
  dense = lambda: mask.jnp_array()[None, None] if mask is not None else _plan_mask(plan)
  if platform == "tpu" or args.smoke:
    backend = "tpu" if platform == "tpu" else "tpu_interpret"
    out["bdiff"] = lambda: functools.partial(api.block_sparse_attention, plan=plan,
                                             backend=backend)
  if platform == "gpu":
    # The Mosaic GPU (Hopper) kernel; not the default backend on GPU until it has run on one.
    out["bdiff"] = lambda: functools.partial(api.block_sparse_attention, plan=plan,
                                             backend="gpu")
    if isinstance(mask, masks.Causal):
      out["cudnn causal"] = lambda: functools.partial(attention.cudnn_attention, mask=mask)
    out["cudnn mask"] = lambda: functools.partial(attention.cudnn_attention, mask=dense())
  if mask is not None and tokamax_unavailable(platform) is None:
    out["tokamax"] = lambda: functools.partial(attention.tokamax_attention, mask=mask)
  if plan.q_len <= args.xla_max_len:
    out["xla"] = lambda: functools.partial(attention.xla_attention,
                                           mask=mask if mask is not None else dense())
  if platform == "tpu" and mask is not None and plan.group_shape == (1, 1):
    out["splash"] = lambda: _splash(mask, args)
  return out


def tokamax_tiles(mask, tile: int) -> tuple[int, int, int]:
  """(tiles the mask needs, tiles tokamax's forward visits, tiles its backward visits) on
  ``tile x tile`` tiles.

  tokamax's forward visits, per query tile, the key tiles in [min k_start, max k_end) of its
  rows; its backward skips tiles only for the plain causal mask (tokamax 0.0.17's Mosaic GPU
  kernels). The ranges are the exact ones ``impl="tokamax"`` passes.
  """
  form = mask_ranges.to_ranges(mask)
  lo, hi = form.row_bounds()
  nq, nk = -(-mask.q_len // tile), -(-mask.kv_len // tile)
  fwd = sum(max(0, -(-int(hi[i:i + tile].max()) // tile) - int(lo[i:i + tile].min()) // tile)
            for i in range(0, mask.q_len, tile))
  needed = int(np.sum(mask.tile_layout(tile, tile) != masks.EMPTY))
  plain_causal = (form.causal_offset, form.causal_window, form.k_end) == (0, None, None)
  return needed, fwd, needed if plain_causal else nq * nk


def tokamax_unavailable(platform: str) -> str | None:
  """Why the tokamax rows cannot run here, or None."""
  if platform != "gpu":
    return (f"platform {platform!r}: tokamax's Mosaic GPU attention needs an NVIDIA GPU "
            "(sm80/sm90/sm100)")
  if importlib.util.find_spec("tokamax") is None:
    return "the optional tokamax package is not installed (pip install -e .[gpu])"
  return None


def _plan_mask(plan):
  return reference.dense_mask(plan)  # [Bp, H, T, T]: only for dense baselines


def _splash(mask, args):
  if isinstance(mask, masks.Causal):
    smask = splash.CausalMask(mask.shape)
  else:
    smask = splash.NumpyMask(mask.dense())
  kernel = splash.make_splash_mha(splash.MultiHeadMask([smask] * args.heads), head_shards=1,
                                  q_seq_shards=1)
  scale = 1.0 / np.sqrt(args.head_dim)
  hm = lambda x: x.transpose(0, 2, 1, 3)
  return lambda q, k, v: hm(jax.vmap(kernel)(hm(q) * scale, hm(k), hm(v)))


def run(args) -> list[dict]:
  platform = jax.default_backend()
  dtype = jnp.dtype(args.dtype)
  rows = []
  if (reason := tokamax_unavailable(platform)) is not None:
    print(f"  skip tokamax (every mask): {reason}")
  for seq_len in args.seq_lens:
    for name in args.masks:
      mask, plan = make_plan(name, seq_len, args.batch, args.heads, args.tile, args.topk_share)
      pairs, tile_elems = plan_lib.allowed_pairs(plan)
      if plan.group_shape == (1, 1):
        pairs, tile_elems = pairs * args.batch * args.heads, tile_elems * args.batch * args.heads
      fwd_flops = 4 * args.head_dim * pairs
      tile_flops = 4 * args.head_dim * tile_elems
      if mask is not None:
        needed, fwd, bwd = tokamax_tiles(mask, args.tile)
        print(f"  {name} T={seq_len}: {needed} tiles needed; tokamax visits {fwd} forward, "
              f"{bwd} backward")
      keys = jax.random.split(jax.random.key(1), 4)
      shape = (args.batch, seq_len, args.heads, args.head_dim)
      q, k, v, w = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
      for kname, build in kernels_for(platform, mask, plan, args).items():
        for mode in args.modes:
          call_args = (q, k, v) if mode == "fwd" else (q, k, v, w)
          factor = 1.0 if mode == "fwd" else 3.5
          try:
            attn = build()
            fn = jax.jit(attn) if mode == "fwd" else jax.jit(with_backward(attn))
            sec = time_fn(fn, call_args, args.iters)
          except Exception as e:  # noqa: BLE001 -- a baseline may not run (OOM, unsupported)
            print(f"  skip {kname} {name} T={seq_len} {mode}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:120]}")
            continue
          row = dict(mask=name, T=seq_len, mode=mode, kernel=kname, ms=sec * 1e3,
                     density=pairs / (args.batch * args.heads * seq_len ** 2),
                     useful=factor * fwd_flops / sec / 1e12,
                     tile=factor * tile_flops / sec / 1e12 if kname == "bdiff" else None)
          rows.append(row)
          print(format_row(row), flush=True)
  return rows


HEADER = "| mask | T | mode | kernel | density | ms | useful TFLOP/s | tile TFLOP/s |"


def format_row(r: dict) -> str:
  tile = f"{r['tile']:.3g}" if r["tile"] is not None else "-"
  return (f"| {r['mask']} | {r['T']} | {r['mode']} | {r['kernel']} | {r['density']:.3f} | "
          f"{r['ms']:.3f} | {r['useful']:.3g} | {tile} |")


def ratios(rows: list[dict]) -> list[str]:
  """One markdown line per non-bdiff row: its time over the bdiff kernel's on the same case."""
  bdiff_ms = {(r["mask"], r["T"], r["mode"]): r["ms"] for r in rows if r["kernel"] == "bdiff"}
  return [f"- {r['mask']} T={r['T']} {r['mode']}: {r['kernel']} time / bdiff time = "
          f"{r['ms'] / bdiff_ms[key]:.2f}"
          for r in rows if r["kernel"] != "bdiff"
          and (key := (r["mask"], r["T"], r["mode"])) in bdiff_ms]


def markdown(rows: list[dict], args) -> str:
  device = jax.devices()[0]
  lines = [
      "# Block-sparse attention benchmark", "",
      f"- date: {datetime.date.today().isoformat()}",
      f"- device: {getattr(device, 'device_kind', device.platform)} ({device.platform}), "
      f"jax {jax.__version__}",
      f"- B={args.batch}, H={args.heads}, D={args.head_dim}, dtype={args.dtype}, "
      f"tile={args.tile}, median of {args.iters} calls after warm-up"
      + (" (smoke: interpret mode, timings meaningless)" if args.smoke else ""),
      "- useful = 4·D·allowed pairs (×3.5 for fwd+bwd); tile = 4·D·computed tile elements",
      "", HEADER, "|" + "---|" * 8]
  ratio_lines = ratios(rows)
  ratio_lines = ["", "Time relative to the bdiff kernel (> 1: bdiff is faster):", ""] + (
      ratio_lines) if ratio_lines else []
  return "\n".join(lines + [format_row(r) for r in rows] + ratio_lines) + "\n"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
  p.add_argument("--masks", nargs="+", default=list(MASK_NAMES), choices=MASK_NAMES)
  p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--tile", type=int, default=128)
  p.add_argument("--topk-share", type=float, default=0.125, help="top-k tiles per row / nk")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--xla-max-len", type=int, default=8192, help="skip dense XLA above this")
  p.add_argument("--out", help="write the table as markdown to this file")
  p.add_argument("--smoke", action="store_true", help="tiny sizes, CPU interpret mode")
  args = p.parse_args(argv)
  if args.smoke:
    args.seq_lens, args.heads, args.head_dim, args.tile = [256], 2, 32, 64
    args.iters, args.dtype = 1, "float32"
    args.masks = ["causal", "block_causal_16", "bd3_16", "topk"]
  return args


def main(argv=None):
  args = parse_args(argv)
  print(HEADER)
  rows = run(args)
  print("\n".join(ratios(rows)))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(markdown(rows, args))
    print(f"wrote {args.out}")
  return rows


if __name__ == "__main__":
  main()
