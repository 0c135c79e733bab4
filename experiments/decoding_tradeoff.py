"""Accuracy vs parallelism for every decoding strategy on a trained run.

  python -m experiments.decoding_tradeoff --workdir runs/tasks --out docs/tradeoff.md

For each strategy in ``SWEEPS`` and each setting of its knobs, decodes the synthetic task suite
(``--tasks``, default the run's ``eval.tasks``) greedily and records mean accuracy (lenient and
strict), tokens per forward and tokens/s (compile excluded). Writes a markdown table, a
two-panel plot (``--out`` with ``.png``) and prints the table. Accuracy is pooled over every
decoded example (``n`` = tasks x examples) with its Wilson 95 % interval. The grids follow the
knob ranges of the strategies' papers (Fast-dLLM arXiv 2505.22618, LLaDA arXiv 2502.09992,
EB-sampler arXiv 2505.24857, ...), trimmed to a few points each. ``--quick`` runs one or two
settings per strategy. Expected time on 2 CPU cores for ``configs/tasks.py`` with the default
64 examples per task: ~10 s per setting plus ~4 s compile per setting.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import bdiff
from bdiff.data import task_names
from bdiff.eval import speed_bench
from bdiff.eval import tasks as eval_tasks
from bdiff.sampling import STRATEGIES
from bdiff.sampling.config import UNSUPPORTED_STRATEGIES


def sweeps(block: int) -> dict[str, list[dict]]:
  """Knob settings per strategy (a few points of each paper's range); ``steps`` are per block."""
  steps = sorted({max(block // d, 1) for d in (1, 2, 4)}, reverse=True)
  return {
      "ar": [{}],
      "threshold": [{"threshold": t} for t in (0.5, 0.7, 0.9, 1.0)],
      "fast_dllm_v2": [{"threshold": t, "sub_block": max(block // 2, 1)} for t in (0.7, 0.9)],
      "factor": [{"factor": f} for f in (0.7, 1.3, 1.9)],
      "static": [{"steps": s, "confidence": c} for s in steps for c in ("prob", "random")],
      "sequential": [{"steps": s} for s in steps],
      "sdar_dynamic": [{"steps": s, "threshold": 0.9} for s in steps],
      "dream": [{"steps": s, "confidence": "margin"} for s in steps],
      "prophet": [{"steps": s} for s in steps],
      "ancestral": [{"steps": s} for s in steps],
      "ancestral_greedy": [{"steps": s} for s in steps],
      "first_hitting": [{}],
      "first_hitting_greedy": [{}],
      "fixed_k": [{"k": k} for k in (2, 4)],
      "entropy_bounded": [{"gamma": g} for g in (0.1, 0.35, 1.0)],
      "entropy_bounded_sdar": [{"gamma": g} for g in (0.1, 0.35, 1.0)],
      "local_leap": [{"threshold": 0.9, "relaxed_threshold": r} for r in (0.5, 0.75)],
      "bacd": [{}],
      "dcd": [{"window": w} for w in (2, 4)],
  }


def run_setting(cfg, params, tokenizer, tasks, strategy: str, knobs: dict) -> dict:
  """Greedy decoding of ``tasks`` with one strategy setting: the pooled row, each task's
  accuracy (``acc:<task>``) and each task's full summary row (``per_task``)."""
  cfg = cfg.copy_and_resolve_references()
  cfg.sample.update(strategy=strategy, temperature=0.0, **knobs)
  sampler = bdiff.Sampler(cfg, params, tokenizer)
  e = cfg.eval
  rows = bdiff.evaluate(sampler, tasks, e.num_examples, e.seed, e.batch_size)
  return {**eval_tasks.pool(rows), "strategy": strategy,
          "knobs": ", ".join(f"{k}={v}" for k, v in knobs.items()) or "-",
          "compile s": sampler.compile_seconds, "per_task": rows,
          **{f"acc:{r['task']}": r["accuracy"] for r in rows}}


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, name in enumerate(dict.fromkeys(r["strategy"] for r in rows)):
    pts = sorted((r["tok/fwd"], r["tok/s"], r["accuracy"]) for r in rows
                 if r["strategy"] == name)
    marker = "osD^v<>P"[i % 8]  # 16+ strategies outnumber the colour cycle
    axes[0].plot([p[0] for p in pts], [p[2] for p in pts], marker + "-", label=name, ms=4)
    axes[1].plot([p[1] for p in pts], [p[2] for p in pts], marker, label=name, ms=4)
  axes[0].set_xlabel("tokens per forward")
  axes[1].set_xlabel("tokens / s")
  axes[1].set_xscale("log")
  for ax in axes:
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(rows, cfg, tasks, png: str, command: str) -> str:
  cols = (("strategy", "{}"), ("knobs", "{}"), ("n", "{}"), ("accuracy", "{:.1f}"),
          ("ci95", "{}"), ("strict", "{:.1f}"), ("tok/fwd", "{:.2f}"), ("tok/s", "{:.1f}"))
  return "\n".join([
      f"### Decoding trade-off: {cfg.name}, block {cfg.diffusion.block_size}",
      "",
      f"Command: `{command}`",
      "",
      f"{datetime.date.today().isoformat()} on {speed_bench.machine()} (shared with other "
      "jobs: tokens/s are pessimistic; accuracy and tokens/forward are deterministic). Tasks: "
      f"{', '.join(tasks)} ({cfg.eval.num_examples} examples each, greedy, "
      f"max_new_tokens={cfg.sample.max_new_tokens}, commit={cfg.sample.commit}). "
      "Accuracy (%) is pooled over the n decoded examples of all tasks, ci95 its Wilson 95 % "
      "interval (where two settings' intervals overlap, this n does not show that they differ); "
      "tokens/forward counts denoising and commit forwards; tokens/s excludes compilation.",
      "",
      eval_tasks.format_table(rows, cols),
      "",
      f"![trade-off]({os.path.basename(png)})",
      ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="markdown output; the plot goes beside it")
  parser.add_argument("--tasks", default=None)
  parser.add_argument("--num_examples", type=int, default=None)
  parser.add_argument("--strategies", default=None, help="comma-separated subset")
  parser.add_argument("--quick", action="store_true", help="first setting of each strategy")
  parser.add_argument("--commit", default=None, choices=("separate", "fused"),
                      help="sample.commit for every setting (default: the run's)")
  args = parser.parse_args(argv)
  cfg, params, tokenizer = bdiff.restore_params(args.workdir)
  if args.num_examples:
    cfg.eval.num_examples = args.num_examples
  if args.commit:
    cfg.sample.commit = args.commit
  tasks = task_names(args.tasks or cfg.eval.tasks)
  grid = sweeps(cfg.diffusion.block_size)
  names = task_names(args.strategies) if args.strategies else list(grid)
  missing = set(STRATEGIES) - set(grid) - set(UNSUPPORTED_STRATEGIES)
  assert not missing, f"strategies without a sweep: {sorted(missing)}"
  rows = []
  for name in names:
    for knobs in grid[name][:1] if args.quick else grid[name]:
      rows.append(run_setting(cfg, params, tokenizer, tasks, name, knobs))
      print(rows[-1], flush=True)
  png = os.path.splitext(args.out)[0] + ".png"
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  plot(rows, png)
  command = "python -m experiments.decoding_tradeoff " + " ".join(
      sys.argv[1:] if argv is None else argv)
  speed_bench.write_report(args.out, markdown(rows, cfg, tasks, png, command))
  return rows


if __name__ == "__main__":
  main()
