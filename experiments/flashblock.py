"""FlashBlock attention caching vs the exact KV cache on a trained block-causal model.

  python -m experiments.flashblock --workdir runs/exact_b4 --out docs/flashblock.md

FlashBlock (Caesarhhh/FlashBlock project page; no code published) caches, at a block's first
denoising step, the attention of the block's queries to every earlier token and reuses it for
the block's later steps (``sample.cache="flashblock"``, ``bdiff.sampling.flashblock``). Both
modes run the same block loop (``commit="separate"``, greedy) on the same prompts; reported
per mode and batch size: tokens/s (mean ± s.d. over ``--repeats`` rounds, both modes once per
round, compilation excluded) and its ratio to ``exact``, forwards and positions per row,
accuracy, and drift = the fraction of generated tokens that differ from ``exact``'s (which
equals the no-cache reference). ``--prompt_pad`` puts that many EOS tokens before every
prompt (the row's context, which the model saw between packed documents), to lengthen the
prefix FlashBlock stops re-attending.

``--synthetic P`` adds the regime FlashBlock was made for, which the task model's short
contexts (48 tokens) cannot reach: a random fp32 model (4 layers, d=256, block 4) decoding 32
tokens one per step after a ``P``-token random prompt, timed the same way (its drift is
measured too, but a random model's confidences say nothing about a trained one's).

``--smoke`` decodes three prompts at batch 2 in two rounds (checks that it runs).
"""
from __future__ import annotations

import argparse
import types

import jax
import numpy as np

import bdiff
from bdiff import runs
from bdiff.config import base_config
from bdiff.data import task_names
from bdiff.eval import speed_bench
from bdiff.eval.tasks import format_table
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config
from experiments import cache_ladder as ladder
from experiments import exact_vs_cached

MODES = ("exact", "flashblock")
COLUMNS = (("cache", "{}"), ("rule", "{}"), ("batch", "{}"), ("tok/s", "{:.1f}"),
           ("± sd", "{:.1f}"), ("× exact", "{:.2f}"), ("forwards/row", "{:.2f}"),
           ("positions/row", "{:.1f}"), ("drift", "{:.3f}"), ("accuracy", "{:.1f}"))


def mode_config(cfg, mode: str, threshold: float):
  """The block run's config with ``mode`` under the rule, separate commit (FlashBlock's)."""
  cfg = exact_vs_cached.block_config(cfg, threshold)
  cfg.sample.update(cache=mode, commit="separate")
  return cfg


def padded(prompts: np.ndarray, lengths: np.ndarray, pad: int, eos: int):
  """Every prompt behind ``pad`` EOS tokens (right-padding kept)."""
  if not pad:
    return prompts, lengths
  return (np.concatenate([np.full((len(prompts), pad), eos, np.int32), prompts], axis=1),
          lengths + pad)


def run(cfg, params, tokenizer, args) -> list[dict]:
  pairs = ladder.examples(task_names(cfg.eval.tasks), args.num_examples, cfg.eval.seed, cfg)
  rows = []
  for threshold in args.thresholds:
    rule = f"threshold {threshold}" if threshold else "1 token/step"
    samplers = {m: runs.Sampler(mode_config(cfg, m, threshold), params, tokenizer,
                                use_mesh=False) for m in MODES}
    prompts, lengths = ladder.prompt_batch(samplers["exact"], pairs)
    prompts, lengths = padded(prompts, lengths, args.prompt_pad, tokenizer.eos_id)
    decoded = {}
    for batch in sorted(args.batches, reverse=True):  # the largest decodes every example
      calls = {m: ladder.compile_sampler(s, prompts, batch) for m, s in samplers.items()}
      if not decoded:
        decoded = {m: ladder.decode(s, calls[m], pairs, prompts, lengths, batch)
                   for m, s in samplers.items()}
      rate = ladder.time_side_by_side(samplers, calls, prompts, lengths, batch, args.repeats)
      for m in MODES:
        d = decoded[m]
        rows.append({"cache": m, "rule": rule, "batch": batch, "tok/s": rate[m].mean,
                     "± sd": rate[m].sd, "× exact": rate[m].mean / rate["exact"].mean,
                     "forwards/row": d["forwards"], "positions/row": d["positions"],
                     "accuracy": d["accuracy"],
                     "drift": drift_lib.token_drift(d["tokens"], decoded["exact"]["tokens"])})
        print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  return rows


def synthetic_config(mode: str, smoke: bool = False) -> gen.SamplerConfig:
  """A random-weight model's sampler: one token per step in blocks of 4, no stop token."""
  cfg = base_config()
  width = 64 if smoke else 256
  cfg.model.update(d_model=width, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=width // 4,
                   mlp_dim=3 * width, dtype="float32", vocab_size=256)
  cfg.diffusion.block_size = 4
  cfg.sample.update(max_new_tokens=32, strategy="static", steps=4, confidence="prob",
                    temperature=0.0, cache=mode, commit="separate", stop_at_eos=False)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg)


def synthetic(args) -> list[dict]:
  """Both modes on a random model after ``args.synthetic`` prompt tokens (module docstring)."""
  configs = {m: synthetic_config(m, args.smoke) for m in MODES}
  params = speed_bench.random_params(configs["exact"].model)
  holders = {m: types.SimpleNamespace(params=params) for m in MODES}  # what the timer reads
  rows = []
  for batch in sorted(args.batches, reverse=True):
    prompts = np.random.default_rng(0).integers(0, 256, (batch, args.synthetic), np.int32)
    lengths = np.full(batch, args.synthetic, np.int32)
    call_args = ladder.call_args(holders["exact"], prompts, lengths, 0, batch)
    calls = {m: jax.jit(lambda *a, c=c: gen.generate_fn(*a, config=c)).lower(
        *call_args).compile() for m, c in configs.items()}
    outs = {m: jax.tree.map(np.asarray, calls[m](*call_args)) for m in MODES}
    rate = ladder.time_side_by_side(holders, calls, prompts, lengths, batch, args.repeats)
    for m in MODES:
      out = outs[m]
      rows.append({"cache": m, "rule": f"random model, prompt {args.synthetic}", "batch": batch,
                   "tok/s": rate[m].mean, "± sd": rate[m].sd,
                   "× exact": rate[m].mean / rate["exact"].mean,
                   "forwards/row": float((out["nfe_denoise"] + out["nfe_commit"]).mean()),
                   "positions/row": float(out["positions_computed"].mean()),
                   "drift": drift_lib.token_drift(out["tokens"], outs["exact"]["tokens"]),
                   "accuracy": float("nan")})
      print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  return rows


def markdown(rows: list[dict], cfg, args, command: str) -> str:
  return "\n".join([
      *speed_bench.run_header(
          f"FlashBlock vs the exact KV cache: {cfg.name} (block {cfg.diffusion.block_size}, "
          f"{cfg.model.n_layers} layers, d={cfg.model.d_model})",
          cfg, args.workdir, command, ", shared with other jobs:"),
      f"tokens/s are mean ± s.d. over {args.repeats} rounds in which both modes ran once "
      "(side by side, compilation excluded). Greedy, commit=separate, "
      f"max_new_tokens={cfg.sample.max_new_tokens}, {args.prompt_pad} EOS tokens before each "
      f"prompt. Forwards, positions, drift and accuracy over the same {args.num_examples} "
      f"prompts of {cfg.eval.tasks}; drift = fraction of generated tokens that differ from "
      "`exact`'s.",
      "",
      format_table(rows, COLUMNS),
      ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a block-causal run")
  parser.add_argument("--out", required=True, help="markdown output")
  parser.add_argument("--thresholds", default="0,0.9",
                      help="comma-separated; 0 = one token per step (static, steps = block)")
  parser.add_argument("--prompt_pad", type=int, default=0)
  parser.add_argument("--num_examples", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--synthetic", type=int, default=0,
                      help="also time a random model after this many prompt tokens (0: no)")
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  args.thresholds = [float(t) for t in args.thresholds.split(",")]
  args.batches = (1, 2) if args.smoke else (1, 32)
  if args.smoke:
    args.num_examples, args.repeats = 3, 2
  cfg, params, tokenizer = bdiff.restore_params(args.workdir)
  rows = run(cfg, params, tokenizer, args)
  if args.synthetic:
    rows += synthetic(args)
  command = speed_bench.experiment_command("flashblock", argv)
  speed_bench.write_report(args.out, markdown(rows, cfg, args, command))
  return rows


if __name__ == "__main__":
  main()
