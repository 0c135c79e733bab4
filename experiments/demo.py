"""`make demo`: train a small block diffusion LM, then decode it with several strategies.

Trains ``configs/tasks.py:size=demo`` (the synthetic task suite's copy and reverse; bundled,
no download) on the CPU, reports the held-out NELBO, then decodes held-out task prompts with AR
decoding and several block-diffusion strategies through the same jit-compiled loop and exact KV
cache, and prints accuracy, tokens per forward and tokens/s side by side, plus a few samples.

  python experiments/demo.py [--steps N] [--workdir DIR]

Hardware: 2 CPU cores, about 4 minutes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bdiff import config as config_lib  # noqa: E402
from bdiff.data import get_task, make_examples, task_names  # noqa: E402
from bdiff.eval import tasks as eval_tasks  # noqa: E402
from bdiff.models import count_params  # noqa: E402
from bdiff import runs as run_lib  # noqa: E402
from bdiff import sharding  # noqa: E402
from bdiff.train import loop  # noqa: E402
from configs import tasks as tasks_config  # noqa: E402

# (label, sample overrides): AR baseline first, then block-diffusion strategies.
STRATEGIES = (
    ("AR (1 token/forward)", dict(strategy="ar")),
    ("static top-1 (LLaDA)", dict(strategy="static", steps=0)),
    ("threshold 0.9 (Fast-dLLM)", dict(strategy="threshold", threshold=0.9)),
    ("threshold 0.7 (Fast-dLLM)", dict(strategy="threshold", threshold=0.7)),
    ("entropy-bounded (EB-sampler)", dict(strategy="entropy_bounded", gamma=0.35)),
)


def demo_config(args):
  cfg = tasks_config.get_config("size=demo")
  cfg.train.update(steps=args.steps, progress=True)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  cfg.eval.update(num_examples=args.examples, batch_size=args.examples)
  return cfg


def train(cfg, workdir: str) -> dict:
  mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  t0 = time.perf_counter()
  out = loop.train(cfg, workdir, mesh=mesh)
  out["seconds"] = time.perf_counter() - t0
  return out


def decode_all(cfg0, params, tokenizer) -> list[dict]:
  rows = []
  for label, overrides in STRATEGIES:
    cfg = config_lib.from_dict(config_lib.to_dict(cfg0))
    cfg.sample.update(overrides)
    sampler = run_lib.Sampler(cfg, params, tokenizer, use_mesh=False)
    results = eval_tasks.evaluate(sampler, task_names(cfg.eval.tasks),
                                  cfg.eval.num_examples, cfg.eval.seed, cfg.eval.batch_size)
    rows.append(_merge(label, results))
    print(f"  {label}: accuracy {rows[-1]['accuracy']:.1f}%  "
          f"tokens/forward {rows[-1]['tok/fwd']:.2f}", flush=True)
  return rows


def _merge(label: str, per_task: list[dict]) -> dict:
  n = sum(r["n"] for r in per_task)
  tokens = sum(r["tokens"] for r in per_task)
  forwards = sum(r["nfe"] * r["n"] for r in per_task)
  seconds = sum(r["seconds"] for r in per_task)
  return {"strategy": label, "n": n,
          "accuracy": sum(r["accuracy"] * r["n"] for r in per_task) / max(n, 1),
          "tok/fwd": tokens / max(forwards, 1), "tok/s": tokens / max(seconds, 1e-9),
          "per_task": {r["task"]: r["accuracy"] for r in per_task}}


def show_samples(cfg, params, tokenizer) -> None:
  sampler = run_lib.Sampler(cfg, params, tokenizer, use_mesh=False)
  examples = [ex for name in task_names(cfg.eval.tasks)
              for ex in make_examples(get_task(name), 2, seed=cfg.eval.seed + 1)]
  for ex, rec in zip(examples, sampler.sample([ex.prompt for ex in examples])):
    mark = "ok " if rec["text"].strip() == ex.answer else "err"
    print(f"  {mark} {ex.prompt!r:32} -> {rec['text']!r:20} ({rec['num_forwards']} forwards)")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--examples", type=int, default=48, help="held-out examples per task")
  p.add_argument("--workdir", default="runs/demo")
  args = p.parse_args()
  cfg = demo_config(args)
  print(f"== bdiff demo: training configs/tasks.py:size=demo ({cfg.data.tasks}) for "
        f"{args.steps} steps, "
        f"block size {cfg.diffusion.block_size}, seq {cfg.train.seq_len}, on "
        f"{jax.devices()[0].platform}")
  out = train(cfg, args.workdir)
  saved = config_lib.from_dict(config_lib.to_dict(cfg))
  saved, params, tokenizer = run_lib.restore_params(args.workdir, saved)  # restored once
  print(f"trained {count_params(params) / 1e6:.2f}M params in {out['seconds']:.0f} s; "
        f"final loss {out['loss']:.3f}; held-out NELBO {out['eval_nll']:.3f} nats/token "
        f"({out['eval_bits_per_token']:.3f} bits, PPL <= {out['eval_ppl_bound']:.2f})")
  print("== decoding held-out task prompts (greedy, exact KV cache):")
  rows = decode_all(saved, params, tokenizer)
  print()
  print(eval_tasks.format_table(rows, columns=(
      ("strategy", "{}"), ("n", "{}"), ("accuracy", "{:.1f}"), ("tok/fwd", "{:.2f}"),
      ("tok/s", "{:.0f}"))))
  print("\n== samples (threshold 0.9):")
  saved.sample.update(strategy="threshold", threshold=0.9)
  show_samples(saved, params, tokenizer)


if __name__ == "__main__":
  main()
