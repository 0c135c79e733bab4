"""SparseD on a trained full-attention model: attention density reached, drift and accuracy.

  python -m experiments.sparsed_density --workdir runs/cache_ladder_mdlm \
      --out docs/sparsed_density.md

SparseD (Wang et al., arXiv 2509.24014; INV-WZQ/SparseD) attends fully for the steps
``t <= floor(T * skip) + 1``, then fixes per layer and head a block-sparse pattern (top
``floor(n_tiles * select) + 1`` key tiles per query tile, two passes OR-ed) and reuses it for
every later step (``bdiff.sampling.sparsed``). For each (select, tile) this decodes the same
task prompts as ``experiments.cache_ladder`` (semi-AR blocks, one token per step, greedy) and
reports the density the pattern reached (kept share of each row's tile pairs, over layers and
heads), the drift from full attention (fraction of generated tokens that differ) and accuracy.

No speed is reported: on CPU the xla path applies the pattern as a dense mask (no saving), and
at this context (tens of positions) SparseD's paper expects none either; its gains are at
long context through the block-sparse kernel (``model.attention_impl="pallas"``).
"""
from __future__ import annotations

import argparse

import numpy as np

import bdiff
from bdiff import runs
from bdiff.data import task_names
from bdiff.eval import speed_bench
from bdiff.eval.tasks import format_table
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import sparsed
from experiments import cache_ladder

COLUMNS = (("select", "{}"), ("tile", "{}"), ("density", "{:.3f}"),
           ("sparse steps/row", "{:.1f}"), ("drift", "{:.3f}"), ("accuracy", "{:.1f}"))


def sparsed_config(cfg, block: int, select: float | None, tile: int, skip: float):
  """``cache_ladder``'s full-attention decoding (cache none), with SparseD unless ``select``
  is None."""
  cfg = cache_ladder.ladder_config(cfg, "none", block, 0.0)
  if select is not None:
    cfg.sample.update(sparse_attention="sparsed", sparsed_select=select, sparsed_tile=tile,
                      sparsed_skip=skip)
  return cfg


def densities(sampler, call, prompts, lengths, n: int, batch: int) -> np.ndarray:
  """``[n]`` SparseD's per-row attention density."""
  outs = [np.asarray(call(*cache_ladder.call_args(sampler, prompts, lengths, lo, batch))
                     ["attention_density"]) for lo in range(0, n, batch)]
  return np.concatenate(outs)[:n]


def run(cfg, params, tokenizer, args) -> list[dict]:
  pairs = cache_ladder.examples(task_names(cfg.eval.tasks), args.num_examples, cfg.eval.seed,
                               cfg)
  dense = runs.Sampler(sparsed_config(cfg, args.block, None, 0, 0.0), params, tokenizer,
                       use_mesh=False)
  prompts, lengths = cache_ladder.prompt_batch(dense, pairs)
  call = cache_ladder.compile_sampler(dense, prompts, args.batch)
  ref = cache_ladder.decode(dense, call, pairs, prompts, lengths, args.batch)
  rows = [{"select": "dense", "tile": "-", "density": 1.0, "sparse steps/row": 0.0,
           "drift": 0.0, "accuracy": ref["accuracy"]}]
  for tile in args.tiles:
    for select in args.selects:
      s = runs.Sampler(sparsed_config(cfg, args.block, select, tile, args.skip), params,
                       tokenizer, use_mesh=False)
      call = cache_ladder.compile_sampler(s, prompts, args.batch)
      out = cache_ladder.decode(s, call, pairs, prompts, lengths, args.batch)
      dens = densities(s, call, prompts, lengths, len(pairs), args.batch)
      dense_steps = sparsed.switch_step(s.config) + 1  # t = 0 .. t_s
      rows.append({"select": select, "tile": tile, "density": float(dens.mean()),
                   "sparse steps/row": max(out["forwards"] - dense_steps, 0.0),
                   "drift": drift_lib.token_drift(out["tokens"], ref["tokens"]),
                   "accuracy": out["accuracy"]})
      print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  return rows


def markdown(rows, cfg, args, command: str) -> str:
  return "\n".join([
      *speed_bench.run_header(
          f"SparseD on {cfg.name} ({cfg.model.n_layers} layers, {cfg.model.n_heads} heads, "
          f"one block of {cfg.diffusion.block_size} = seq_len) decoded with full attention",
          cfg, args.workdir, command),
      "Decoding: semi-AR "
      f"blocks of {args.block}, one token per step, greedy, "
      f"max_new_tokens={cfg.sample.max_new_tokens}, {args.num_examples} prompts of "
      f"{cfg.eval.tasks}; SparseD skip={args.skip} (full attention for the steps t <= "
      "floor(T * skip) + 1, counted from 0). density = kept share of each row's (query tile, "
      "key tile) pairs inside its budget, mean over rows, layers and heads; sparse steps/row "
      "= forwards under the pattern; drift = fraction of generated tokens that differ from "
      "full attention's. No speed: the xla path applies the pattern as a dense mask, and at "
      "this context length SparseD expects no gain (its gains need long context and the "
      "block-sparse kernel).",
      "",
      format_table(rows, COLUMNS),
      ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a one-block (MDLM) run")
  parser.add_argument("--out", required=True, help="markdown output")
  parser.add_argument("--block", type=int, default=8, help="semi-AR block length")
  parser.add_argument("--skip", type=float, default=0.2)
  parser.add_argument("--selects", default="0.1,0.3,0.5")
  parser.add_argument("--tiles", default="4,8")
  parser.add_argument("--num_examples", type=int, default=96)
  parser.add_argument("--batch", type=int, default=32)
  args = parser.parse_args(argv)
  args.selects = [float(x) for x in args.selects.split(",")]
  args.tiles = [int(x) for x in args.tiles.split(",")]
  cfg, params, tokenizer = bdiff.restore_params(args.workdir)
  rows = run(cfg, params, tokenizer, args)
  command = speed_bench.experiment_command("sparsed_density", argv)
  speed_bench.write_report(args.out, markdown(rows, cfg, args, command))
  return rows


if __name__ == "__main__":
  main()
