"""Build time and density of the BD3-LM two-stream sparsity plan (host side, no device).

  python -m experiments.plan_build --seq_len 8192 --repeats 5

Each build starts from an empty plan cache (the plan of a mask is cached per process); the
first build of a process also fills the masks' own tile-layout caches, hence the spread.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bdiff import masks
from bdiff.eval import speed_bench, stats
from pallas_kernels.block_sparse_attention import plan as plan_lib


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_len", type=int, default=8192)
  parser.add_argument("--tile", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  print(f"{speed_bench.machine()}; BD3 two-stream mask over 2 x {args.seq_len} tokens, "
        f"tiles {args.tile}; build time mean ± s.d. over {args.repeats} cold builds\n")
  print("| BD3 block | build time | tiles listed | max tiles per query row |\n|---|---|---|---|")
  for block in (4, 16, 64):
    mask = masks.bd3_training(args.seq_len, block)
    times = []
    for _ in range(args.repeats):
      plan_lib._static_plan.cache_clear()  # pylint: disable=protected-access
      start = time.perf_counter()
      plan = plan_lib.plan_for_mask(mask, block_q=args.tile, block_k=args.tile)
      times.append(time.perf_counter() - start)
    kind = plan_lib.tile_kinds(mask, args.tile, args.tile)
    listed = int((kind > plan_lib.EMPTY).sum())
    ms = stats.mean_sd([1e3 * t for t in times])
    share = f"{listed} / {kind.size} = {100 * listed / kind.size:.1f} %"
    print(f"| {block} | {ms.format(1)} ms | {share} | {int(np.asarray(plan.kv_count).max())} |")


if __name__ == "__main__":
  main()
