"""Elastic-Cache on a full-attention model: speed, work and drift against its gamma.

  python -m experiments.elastic_cache --workdir runs/cache_ladder_mdlm \
      --out docs/elastic_cache.md

Elastic-Cache (arXiv 2510.14973, VILA-Lab/Elastic-Cache; ``bdiff.sampling.elastic_cache``)
decodes in a sliding window of the first ``--window`` masks, ``--k`` tokens per step (the
reference's top-k rule, ``tokens_per_iter``; the default k = 1 is the regime with the most
cached steps) or with the threshold rule (``--threshold``, the reference's tau 0.9), and, at
each cached step, recomputes the layers after the first one
whose tracked-token attention drifted (cosine below ``gamma``). Each ``--gammas`` value is
decoded beside ``none`` (the exact full recompute) with the same window and rule, greedily,
one block over the generation as the reference decodes, and reported as in
``experiments.cache_ladder``: tokens/s at batch 1 and 32 (side by side, compilation excluded),
forwards and positions per row, drift from ``none`` and task accuracy. ``gamma = 0`` never
refreshes (a cosine is >= 0), ``gamma > 1`` refreshes after the first layer at every cached
step.

The run must be a one-block (MDLM) run, as for the cache ladder. ``--smoke``: three prompts,
batches 1 and 2, two rounds (numbers mean nothing).
"""
from __future__ import annotations

import argparse


import bdiff
from bdiff import runs
from bdiff.data import task_names
from bdiff.eval import speed_bench
from bdiff.eval.tasks import format_table
from bdiff.sampling import drift as drift_lib
from experiments import cache_ladder as ladder

COLUMNS = (("cache", "{}"), ("gamma", "{}"), ("batch", "{}"), ("tok/s", "{:.1f}"),
           ("± sd", "{:.1f}"), ("× none", "{:.2f}"), ("forwards/row", "{:.2f}"),
           ("positions/row", "{:.1f}"), ("drift", "{:.3f}"), ("accuracy", "{:.1f}"))


def elastic_config(cfg, gamma: float | None, args):
  """The run decoded with full attention, one block, top-k or threshold in a window of masks:
  ``cache="elastic"`` with ``gamma``, or ``"none"`` (``gamma=None``)."""
  cfg = ladder.ladder_config(cfg, "none", 0, args.threshold)
  if not args.threshold:
    cfg.sample.update(strategy="fixed_k", k=args.k)
  cfg.sample.update(window=args.window, cache="none" if gamma is None else "elastic")
  if gamma is not None:
    cfg.sample.cache_gamma = gamma
  return cfg


def run(cfg, params, tokenizer, args) -> list[dict]:
  pairs = ladder.examples(task_names(cfg.eval.tasks), args.num_examples, cfg.eval.seed, cfg)
  names = ["none"] + [f"elastic@{g}" for g in args.gammas]
  samplers = {n: runs.Sampler(elastic_config(cfg, g, args), params,
                              tokenizer, use_mesh=False)
              for n, g in zip(names, [None] + args.gammas)}
  prompts, lengths = ladder.prompt_batch(samplers["none"], pairs)
  rows, decoded = [], {}
  for batch in sorted(args.batches, reverse=True):  # the largest decodes every example
    calls = {n: ladder.compile_sampler(s, prompts, batch) for n, s in samplers.items()}
    if not decoded:
      decoded = {n: ladder.decode(s, calls[n], pairs, prompts, lengths, batch)
                 for n, s in samplers.items()}
    rate = ladder.time_side_by_side(samplers, calls, prompts, lengths, batch, args.repeats)
    for n in names:
      d = decoded[n]
      rows.append({"cache": n.split("@")[0], "gamma": n.split("@")[1] if "@" in n else "-",
                   "batch": batch, "tok/s": rate[n].mean, "± sd": rate[n].sd,
                   "× none": rate[n].mean / rate["none"].mean, "forwards/row": d["forwards"],
                   "positions/row": d["positions"], "accuracy": d["accuracy"],
                   "drift": drift_lib.token_drift(d["tokens"], decoded["none"]["tokens"])})
      print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  return sorted(rows, key=lambda r: (r["batch"], names.index(
      r["cache"] + ("" if r["gamma"] == "-" else "@" + r["gamma"]))))


def rule_text(args) -> str:
  if args.threshold:
    return f"threshold {args.threshold} with at least one token per step"
  return f"the {args.k} most confident tokens per step (fixed_k)"


def markdown(rows: list[dict], cfg, args, command: str) -> str:
  return "\n".join([
      *speed_bench.run_header(
          f"Elastic-Cache: {cfg.name} ({cfg.model.n_layers} layers, d={cfg.model.d_model}, "
          f"one block = seq_len) decoded with full attention",
          cfg, args.workdir, command, ", shared with other jobs:"),
      f"tokens/s are mean ± s.d. over {args.repeats} rounds in which every row's sampler ran "
      "once (side by side, compilation excluded); `× none` is the ratio of means. Decoding: "
      f"one block, {rule_text(args)}, decided in the first {args.window} masks "
      "(sample.window), greedy, "
      f"max_new_tokens={cfg.sample.max_new_tokens}, track 1 token per layer. Positions per row "
      "count a layer-partial step as positions summed over layers / layers. Forwards, "
      f"positions, drift and accuracy over the same {args.num_examples} prompts of "
      f"{cfg.eval.tasks}; drift = fraction of generated tokens that differ from `none`'s "
      "(same window and rule).",
      "",
      format_table(rows, COLUMNS),
      ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a one-block (MDLM) run")
  parser.add_argument("--out", required=True, help="markdown output")
  parser.add_argument("--window", type=int, default=8, help="masks decided per step")
  parser.add_argument("--k", type=int, default=1, help="tokens per step (top-k rule)")
  parser.add_argument("--threshold", type=float, default=0.0,
                      help="tau of the threshold rule (reference: 0.9); 0 = the top-k rule")
  parser.add_argument("--gammas", default="0,0.9,2", help="comma-separated cache_gamma values")
  parser.add_argument("--num_examples", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  args.gammas = [float(g) for g in args.gammas.split(",")]
  args.batches = (1, 2) if args.smoke else (1, 32)
  if args.smoke:
    args.num_examples, args.repeats = 3, 2
  cfg, params, tokenizer = bdiff.restore_params(args.workdir)
  rows = run(cfg, params, tokenizer, args)
  command = speed_bench.experiment_command("elastic_cache", argv)
  speed_bench.write_report(args.out, markdown(rows, cfg, args, command))
  return rows


if __name__ == "__main__":
  main()
