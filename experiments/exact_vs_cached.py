"""Exact block model vs full-attention model with approximate caches, at equal accuracy.

  bdiff train --config configs/tasks.py:size=demo,block_size=4 --workdir runs/exact_b4
  python -m experiments.exact_vs_cached --block_run runs/exact_b4 \
      --full_run runs/cache_ladder_mdlm --out docs/exact_vs_cached.md

Two models of the same size trained on the same task: a block-causal model (block diffusion,
Arriola et al., arXiv 2503.09573), decoded with its exact KV cache of clean blocks, and a
one-block (MDLM) model decoded as full attention in LLaDA-style semi-AR blocks (arXiv
2502.09992) of the same length, with no cache (the exact full recompute) and with the fastest
caches of ``experiments.cache_ladder`` (Fast-dLLM v1's ``dual``, arXiv 2505.22618, and
``window_block`` after Window-Diffusion, arXiv 2601.20332). Each is decoded greedily at one
token per step (low-confidence remasking, steps = block) and with Fast-dLLM's threshold rule
(``--threshold``), on the same prompts. Reported per configuration: accuracy with its Wilson
95 % interval, tokens per forward, positions computed per row, tokens/s (mean ± s.d. over
``--repeats`` rounds, every configuration once per round, compilation excluded), and, for the
full-attention rows, the block model's tokens/s over theirs under the same rule, with
``tie`` where the two accuracy intervals overlap (equal accuracy at this n).

``--smoke`` decodes three prompts at batch 2 in one round (checks that it runs; its numbers mean
nothing).
"""
from __future__ import annotations

import argparse
import datetime

import numpy as np

import bdiff
from bdiff import runs
from bdiff.data import task_names
from bdiff.eval import speed_bench, stats
from bdiff.eval.tasks import format_table
from bdiff.sampling import generate as gen
from experiments import cache_ladder as ladder

FULL_CACHES = ("none", "dual", "window_block")
COLUMNS = (("model", "{}"), ("cache", "{}"), ("rule", "{}"), ("n", "{}"),
           ("accuracy", "{:.1f}"), ("ci95", "{}"), ("tok/fwd", "{:.2f}"),
           ("positions/row", "{:.1f}"), ("tok/s", "{:.1f}"), ("± sd", "{:.1f}"),
           ("block ÷ this", "{}"), ("accuracy vs block", "{}"))


def block_config(cfg, threshold: float):
  """The block-causal run's config with its exact KV cache, greedy, under the given rule."""
  if cfg.diffusion.block_size >= cfg.train.seq_len:
    raise ValueError(f"--block_run: diffusion.block_size={cfg.diffusion.block_size} >= "
                     f"train.seq_len={cfg.train.seq_len}: a one-block run has no exact "
                     "block cache; pass a block-causal run")
  cfg = cfg.copy_and_resolve_references()
  rule = (dict(strategy="threshold", threshold=threshold) if threshold
          else dict(strategy="static", steps=cfg.diffusion.block_size, confidence="prob"))
  cfg.sample.update(temperature=0.0, cache="exact", block_size=0, **rule)
  return cfg


def build_samplers(block, full, args) -> dict:
  """``(model, cache, rule) -> runs.Sampler`` for every configuration compared."""
  out = {}
  for threshold in (0.0, args.threshold):
    rule = f"threshold {threshold}" if threshold else "1 token/step"
    cfg, params, tok = block
    out[("block", "exact", rule)] = runs.Sampler(block_config(cfg, threshold), params, tok,
                                                 use_mesh=False)
    cfg, params, tok = full
    for mode in FULL_CACHES:
      out[("full", mode, rule)] = runs.Sampler(
          ladder.ladder_config(cfg, mode, args.block, threshold), params, tok, use_mesh=False)
  return out


def tokens_per_forward(decoded: dict, forwards_per_row: float) -> float:
  """Generated tokens (every slot before ``NO_TOKEN``) per denoising forward, a ratio of
  means. Commit passes are not counted: the block model commits fused into its next forward and
  the full-attention loop has none, so both report ``nfe_commit`` = 0 here."""
  return float((decoded["tokens"] != gen.NO_TOKEN).sum(1).mean()) / forwards_per_row


def compare(row: dict, ref: dict, rate, ref_rate) -> dict:
  """The block model's speed over this row's, and whether their accuracies are separated."""
  lo, hi = stats.wilson_interval(row["correct"], row["n"])
  rlo, rhi = stats.wilson_interval(ref["correct"], ref["n"])
  same = lo <= rhi and rlo <= hi
  ratio = f"{ref_rate.mean / rate.mean:.2f}"
  if not stats.distinguishable(ref_rate, rate):
    ratio += " (speed tie)"
  return {"block ÷ this": ratio,
          "accuracy vs block": "tie" if same else ("higher" if lo > rhi else "lower")}


def run(block, full, args) -> list[dict]:
  """Decode every configuration on the same prompts, then time them side by side."""
  cfg = full[0]
  pairs = ladder.examples(task_names(cfg.eval.tasks), args.num_examples, cfg.eval.seed,
                          block[0], full[0])
  samplers = build_samplers(block, full, args)
  prompts, lengths = ladder.prompt_batch(next(iter(samplers.values())), pairs)
  calls = {k: ladder.compile_sampler(s, prompts, args.batch) for k, s in samplers.items()}
  rows = {}
  for key, s in samplers.items():
    d = ladder.decode(s, calls[key], pairs, prompts, lengths, args.batch)
    correct = round(d["accuracy"] * len(pairs) / 100)
    rows[key] = {"model": key[0], "cache": key[1], "rule": key[2],
                 **stats.accuracy_summary(correct, len(pairs)),
                 "tok/fwd": tokens_per_forward(d, d["forwards"]),
                 "positions/row": d["positions"], "block ÷ this": "-",
                 "accuracy vs block": "-"}
  rate = ladder.time_side_by_side(samplers, calls, prompts, lengths, args.batch, args.repeats)
  for key, row in rows.items():
    row.update({"tok/s": rate[key].mean, "± sd": rate[key].sd})
    ref = ("block", "exact", key[2])
    if key[0] == "full":
      row.update(compare(row, rows[ref], rate[key], rate[ref]))
  return list(rows.values())


def markdown(rows: list[dict], block_cfg, full_cfg, args, command: str) -> str:
  def describe(c, run_dir):
    return (f"`{run_dir}` ({c.name}, block {c.diffusion.block_size}, {c.model.n_layers} layers, "
            f"d={c.model.d_model}, {speed_bench.trained_steps(c, run_dir)} steps on "
            f"{c.data.tasks})")
  return "\n".join([
      f"# Exact block model vs full-attention model + approximate cache ({full_cfg.eval.tasks})",
      "",
      f"Block-causal model: {describe(block_cfg, args.block_run)}; full-attention model: "
      f"{describe(full_cfg, args.full_run)}, decoded in semi-AR blocks of {args.block}.",
      "",
      f"Command: `{command}`",
      "",
      f"{datetime.date.today().isoformat()} on {speed_bench.machine()} (2-core CPU VM shared "
      f"with other jobs). Batch {args.batch}, greedy, max_new_tokens="
      f"{full_cfg.sample.max_new_tokens}, the same {args.num_examples} prompts for every row. "
      f"tokens/s: mean ± s.d. over {args.repeats} rounds, every configuration once per round "
      "(side by side, compilation excluded; the machine's load is the noise). Accuracy: n "
      "prompts, Wilson 95 % interval; `accuracy vs block`: `tie` where this row's interval "
      "overlaps the block model's under the same rule. `block ÷ this`: block model tok/s over "
      "this row's, same rule; `(speed tie)` where the means are within 2 standard errors. "
      "tok/fwd: generated tokens per denoising forward; positions/row: canvas positions "
      "computed per row over the whole decode.",
      "",
      format_table(rows, COLUMNS),
      ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--block_run", required=True, help="a block-causal run")
  parser.add_argument("--full_run", required=True, help="a one-block (MDLM) run, same task")
  parser.add_argument("--out", required=True, help="markdown output")
  parser.add_argument("--block", type=int, default=0,
                      help="semi-AR block of the full model (0 = the block model's block)")
  parser.add_argument("--threshold", type=float, default=0.9)
  parser.add_argument("--num_examples", type=int, default=96)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--tasks", default=None,
                      help="comma-separated task names (default: the runs' shared eval.tasks)")
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  if args.smoke:
    args.num_examples, args.batch, args.repeats = 3, 2, 1
  block, full = bdiff.restore_params(args.block_run), bdiff.restore_params(args.full_run)
  if args.tasks:
    block[0].eval.tasks = full[0].eval.tasks = args.tasks
  if block[0].eval.tasks != full[0].eval.tasks:
    raise ValueError(f"--block_run evaluates {block[0].eval.tasks!r} but --full_run "
                     f"{full[0].eval.tasks!r}: the runs must share a task")
  args.block = args.block or block[0].diffusion.block_size
  rows = run(block, full, args)
  print(format_table(rows, COLUMNS), flush=True)
  command = speed_bench.experiment_command("exact_vs_cached", argv)
  speed_bench.write_report(args.out, markdown(rows, block[0], full[0], args, command))
  return rows


if __name__ == "__main__":
  main()
