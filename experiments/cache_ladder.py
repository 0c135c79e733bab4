"""The approximate-cache ladder on a full-attention model: speed vs drift vs accuracy.

  bdiff train --config configs/tasks.py:size=demo,block_size=48 \
      --workdir runs/cache_ladder_mdlm --config.train.steps=600
  python -m experiments.cache_ladder --workdir runs/cache_ladder_mdlm \
      --out docs/cache_ladder.md

For each ``sample.cache`` mode of a full-attention model (``none``, the exact full recompute;
Fast-dLLM v1's ``prefix`` / ``dual``, arXiv 2505.22618; dKV-Cache's ``dkv`` and
``dkv_greedy``, arXiv 2505.15781; ``window_block`` and ``window`` after Window-Diffusion, arXiv
2601.20332; ``elastic``, Elastic-Cache, arXiv 2510.14973, its window of masks = the semi-AR
block, so it decides what ``none`` decides) it decodes the same task prompts with LLaDA-style semi-AR blocks (``--block``),
greedily, one token per step (LLaDA's low-confidence remasking, arXiv 2502.09992; the regime
with the most cached steps) or with Fast-dLLM's threshold rule (``--threshold``), and reports

* tokens/s at batch 1 and batch 32: every mode's compiled sampler is timed in the same rounds
  (round r runs each mode once, so load changes on a shared machine hit all modes alike);
  mean ± s.d. over ``--repeats`` rounds, compilation excluded; ``× none`` is the ratio of
  means;
* forwards and positions recomputed per row (``positions_computed``);
* drift: the fraction of generated tokens that differ from ``none``'s under the same prompts
  and keys (``bdiff.sampling.drift.token_drift``), over all ``--num_examples`` prompts;
  ``dkv_greedy`` needs LLaDA's random remasking (it knows each step's positions before the
  forward), so it decodes one token per step in random order whatever the rule, and its drift
  is against ``none`` decoded the same way (its accuracy is that of a random order);
* accuracy on those prompts (the run's ``eval.tasks``, scored as ``bdiff eval`` scores).

The run must have been trained with one block over its sequence (an MDLM:
``diffusion.block_size >= train.seq_len``); the block-causal mask of a single block is full
attention, so it is decoded as ``model.attention="bidirectional"``.

``--smoke`` runs three prompts, batches 1 and 2, two rounds (CI's check that the experiment runs
end to end; its numbers mean nothing).
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

import bdiff
from bdiff import runs
from bdiff.data import tasks as tasks_lib
from bdiff.data import task_names, training_prompts
from bdiff.eval import speed_bench, stats
from bdiff.eval.tasks import format_table
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import generate as gen

MODES = ("none", "prefix", "dual", "dkv", "window_block", "window", "dkv_greedy", "elastic")
RANDOM_ORDER_MODES = ("dkv_greedy",)  # decoded under random remasking (see the docstring)
COLUMNS = (("cache", "{}"), ("batch", "{}"), ("tok/s", "{:.1f}"), ("± sd", "{:.1f}"),
           ("× none", "{:.2f}"), ("forwards/row", "{:.2f}"), ("positions/row", "{:.1f}"),
           ("drift", "{:.3f}"), ("accuracy", "{:.1f}"))


def ladder_config(cfg, mode: str, block: int, threshold: float, rule_of: str = ""):
  """The run's config decoding full attention in ``block``-long semi-AR blocks with ``mode``:
  Fast-dLLM's threshold rule, or (``threshold=0``) LLaDA's low-confidence remasking at one
  token per step; random remasking for the modes that need it (and, ``rule_of``, for the
  ``none`` reference of one of them)."""
  if cfg.diffusion.block_size < cfg.train.seq_len:
    raise ValueError(f"--workdir: diffusion.block_size={cfg.diffusion.block_size} < "
                     f"train.seq_len={cfg.train.seq_len}: not a one-block (MDLM) run, so it "
                     "is no full-attention model")
  cfg = cfg.copy_and_resolve_references()
  cfg.model.attention = "bidirectional"
  rule = (dict(strategy="threshold", threshold=threshold) if threshold
          else dict(strategy="static", steps=block, confidence="prob"))
  if (rule_of or mode) in RANDOM_ORDER_MODES:
    rule = dict(strategy="static", steps=block, confidence="random")
  cfg.sample.update(block_size=block, temperature=0.0, cache=mode, cache_refresh=0,
                    commit="separate", **rule)  # fused commit: a block-causal setting
  if mode == "elastic":  # Elastic-Cache decides in a window of masks: here the semi-AR block,
    cfg.sample.window = block  # with one token per step as its top-k rule (fixed_k, k = 1)
    if not threshold:
      cfg.sample.update(strategy="fixed_k", k=1)
  return cfg


def examples(tasks: list[str], n: int, seed: int, *cfgs) -> list[tuple]:
  """``n`` (task, example) pairs, the tasks interleaved so any prefix mixes them, none with a
  prompt that the runs of ``cfgs`` trained on."""
  seen = [training_prompts(c.data, c.train.seed) for c in cfgs]
  per = [[(t, ex) for ex in tasks_lib.held_out_examples(
      t, -(-n // len(tasks)), seed, frozenset().union(*(s.get(t, ()) for s in seen)))]
         for t in tasks]
  return [pair for group in zip(*per) for pair in group][:n]


def prompt_batch(sampler: runs.Sampler, pairs: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
  """Every example's prompt ids, right-padded to one width: ``(prompts [n, W], lengths [n])``."""
  ids = [sampler.encode(ex.prompt) for _, ex in pairs]
  mult = sampler.config.prompt_multiple
  prompts = np.zeros((len(ids), -(-max(map(len, ids)) // mult) * mult), np.int32)
  for i, x in enumerate(ids):
    prompts[i, :len(x)] = x
  return prompts, np.array([len(x) for x in ids], np.int32)


def compile_sampler(sampler: runs.Sampler, prompts: np.ndarray, batch: int):
  """The sampler AOT-compiled for ``batch`` rows of this width (compilation not timed)."""
  config = sampler.config
  args = (sampler.params, prompts[:batch], jax.random.key(0), np.zeros(batch, np.int32),
          np.zeros(batch, np.int32))
  return jax.jit(lambda *a: gen.generate_fn(*a, config=config)).lower(*args).compile()


def call_args(sampler, prompts, lengths, lo: int, batch: int) -> tuple:
  """Rows ``lo : lo + batch`` (the last chunk padded with its own last row), row ids = index."""
  idx = np.minimum(np.arange(lo, lo + batch), len(prompts) - 1)
  return (sampler.params, prompts[idx], jax.random.key(0), lengths[idx], idx.astype(np.int32))


def decode(sampler: runs.Sampler, call, pairs: list[tuple], prompts, lengths, batch) -> dict:
  """Decode every example in chunks of ``batch``: tokens ``[n, G]``, accuracy (%), forwards
  and positions per row."""
  outs = []
  for lo in range(0, len(pairs), batch):
    out = jax.tree.map(np.asarray, call(*call_args(sampler, prompts, lengths, lo, batch)))
    outs.append(out)
  cat = {k: np.concatenate([o[k] for o in outs])[:len(pairs)]
         for k in ("tokens", "num_tokens", "nfe_denoise", "positions_computed")}
  texts = [sampler.decode(t[:n]) for t, n in zip(cat["tokens"], cat["num_tokens"])]
  right = [tasks_lib.get_task(t).score(ex, text) for (t, ex), text in zip(pairs, texts)]
  return dict(tokens=cat["tokens"], accuracy=100.0 * float(np.mean(right)),
              forwards=float(cat["nfe_denoise"].mean()),
              positions=float(cat["positions_computed"].mean()))


def time_side_by_side(samplers: dict, calls: dict, prompts, lengths, batch: int,
                      repeats: int) -> dict:
  """tokens/s per mode (``stats.MeanSD``) on the first ``batch`` prompts, the modes timed in
  the same ``repeats`` rounds."""
  args = {m: call_args(s, prompts, lengths, 0, batch) for m, s in samplers.items()}
  tokens = {m: int(np.asarray(calls[m](*args[m])["num_tokens"]).sum()) for m in samplers}
  rates = {m: [] for m in samplers}
  for _ in range(repeats):
    for m in samplers:
      (seconds,) = speed_bench.wall_times(calls[m], *args[m], repeats=1)
      rates[m].append(tokens[m] / seconds)
  return {m: stats.mean_sd(r) for m, r in rates.items()}


def run(cfg, params, tokenizer, args) -> list[dict]:
  """Every mode at every batch size: one row each (see the module docstring)."""
  pairs = examples(task_names(cfg.eval.tasks), args.num_examples, cfg.eval.seed, cfg)
  modes = args.modes
  samplers = {m: runs.Sampler(ladder_config(cfg, m, args.block, args.threshold), params,
                              tokenizer, use_mesh=False) for m in modes}
  references = {m: runs.Sampler(ladder_config(cfg, "none", args.block, args.threshold, m),
                                params, tokenizer, use_mesh=False)
                for m in modes if m in RANDOM_ORDER_MODES}
  prompts, lengths = prompt_batch(samplers["none"], pairs)
  rows, decoded = [], {}
  for batch in sorted(args.batches, reverse=True):  # the largest decodes every example
    calls = {m: compile_sampler(s, prompts, batch) for m, s in samplers.items()}
    if not decoded:
      decoded = {m: decode(s, calls[m], pairs, prompts, lengths, batch)
                 for m, s in samplers.items()}
      ref = {m: decode(s, compile_sampler(s, prompts, batch), pairs, prompts, lengths, batch)
             for m, s in references.items()}
    rate = time_side_by_side(samplers, calls, prompts, lengths, batch, args.repeats)
    for m in modes:
      d = decoded[m]
      rows.append({"cache": m, "batch": batch, "tok/s": rate[m].mean, "± sd": rate[m].sd,
                   "× none": rate[m].mean / rate["none"].mean, "forwards/row": d["forwards"],
                   "positions/row": d["positions"], "accuracy": d["accuracy"],
                   "drift": drift_lib.token_drift(
                       d["tokens"], ref.get(m, decoded["none"])["tokens"])})
      print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  return sorted(rows, key=lambda r: (r["batch"], modes.index(r["cache"])))


def rule_text(threshold: float) -> str:
  if threshold:
    return f"threshold {threshold} (Fast-dLLM's rule)"
  return "one token per step (LLaDA's low-confidence remasking, steps = block)"


def markdown(rows: list[dict], cfg, args, command: str) -> str:
  return "\n".join([
      *speed_bench.run_header(
          f"Cache ladder: {cfg.name} (block {cfg.diffusion.block_size} = seq_len, "
          f"{cfg.model.n_layers} layers, d={cfg.model.d_model}) decoded with full attention",
          cfg, args.workdir, command, ", shared with other jobs:"),
      f"tokens/s are mean ± s.d. over {args.repeats} rounds in which every mode ran once "
      "(side by side, compilation excluded); `× none` is the ratio of means, and where two "
      "modes' intervals overlap this run does not separate them. Decoding: semi-AR blocks of "
      f"{args.block}, {rule_text(args.threshold)}, greedy, "
      f"max_new_tokens={cfg.sample.max_new_tokens}, cache_refresh=0 (each method's "
      f"block-start refresh only). Forwards, positions, drift and accuracy are over the same "
      f"{args.num_examples} prompts of {cfg.eval.tasks} (deterministic); drift = fraction of "
      "generated tokens that differ from `none`'s (dkv_greedy: decoded under random "
      "remasking, one token per step, its drift against `none` decoded the same way).",
      "",
      format_table(rows, COLUMNS),
      ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a one-block (MDLM) run")
  parser.add_argument("--out", required=True, help="markdown output")
  parser.add_argument("--block", type=int, default=8, help="semi-AR block length")
  parser.add_argument("--threshold", type=float, default=0.0,
                      help="Fast-dLLM's threshold rule; 0 = one token per step (LLaDA static)")
  parser.add_argument("--num_examples", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--modes", default=",".join(MODES), help="comma-separated; none first")
  parser.add_argument("--tasks", default=None,
                      help="comma-separated task names (default: the run's eval.tasks)")
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  args.modes = args.modes.split(",")
  if args.modes[0] != "none" or not set(args.modes) <= set(MODES):
    raise ValueError(f"--modes must start with 'none' (the reference) and name modes of "
                     f"{MODES}, got {args.modes}")
  args.batches = (1, 2) if args.smoke else (1, 32)
  if args.smoke:
    args.num_examples, args.repeats = 3, 2
  cfg, params, tokenizer = bdiff.restore_params(args.workdir)
  cfg.eval.tasks = args.tasks or cfg.eval.tasks
  rows = run(cfg, params, tokenizer, args)
  command = speed_bench.experiment_command("cache_ladder", argv)
  speed_bench.write_report(args.out, markdown(rows, cfg, args, command))
  return rows


if __name__ == "__main__":
  main()
