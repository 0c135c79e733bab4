"""`make demo`: train a small block diffusion LM on a bundled task, then decode it several ways.

Trains ``configs/tasks.py:size=demo`` (a synthetic task of the bundled suite; no download) on
the CPU with a progress bar, reports the held-out NELBO, then decodes held-out task prompts with
one token per forward and with parallel block-diffusion strategies through the same
jit-compiled loop and exact KV cache. It prints accuracy (with ``n`` and a Wilson 95 %
interval) against tokens per forward, a few samples, and the wall and CPU time of each phase.

  python -m experiments.demo [--steps N] [--workdir DIR] [--examples N]

The demo always starts from scratch: a previous demo run in ``--workdir`` is removed first (so a
second run prints the same table: seeds are fixed and the CPU computation is deterministic).
Hardware: 2 CPU cores; see docs/demo.md for the measured time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time

import jax
import tqdm

import bdiff
from bdiff import sharding
from bdiff.data import get_task, held_out_examples, task_names, training_prompts
from bdiff.eval import speed_bench
from bdiff.eval import tasks as eval_tasks
from bdiff.models import count_params
from configs import tasks as tasks_config

# (label, sample overrides): one token per forward first, then parallel strategies, roughly by
# increasing tokens per forward. ``steps`` is the number of denoising steps per block.
STRATEGIES = (
    ("AR order, 1 token/forward", dict(strategy="ar")),
    ("threshold 0.9 (Fast-dLLM)", dict(strategy="threshold", threshold=0.9)),
    ("threshold 0.5 (Fast-dLLM)", dict(strategy="threshold", threshold=0.5)),
    ("static 2 tokens/step (LLaDA)", dict(strategy="static", steps=-2)),
    ("static 4 tokens/step (LLaDA)", dict(strategy="static", steps=-4)),
    ("whole block per step", dict(strategy="static", steps=1)),
)
TABLE = (("strategy", "{}"), ("n", "{}"), ("accuracy", "{:.1f}"), ("ci95", "{}"),
         ("tok/fwd", "{:.2f}"), ("nfe", "{:.1f}"))


class Phases:
  """Wall and process-CPU seconds of each named phase, printed as they end."""

  def __init__(self):
    self.rows: list[tuple[str, float, float]] = []

  def run(self, name: str, fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    self.rows.append((name, time.perf_counter() - wall, time.process_time() - cpu))
    print(f"[{name}: {self.rows[-1][1]:.1f} s wall, {self.rows[-1][2]:.1f} s CPU]", flush=True)
    return out

  def summary(self) -> str:
    lines = [f"  {name:<28} {wall:7.1f} s wall {cpu:7.1f} s CPU"
             for name, wall, cpu in self.rows]
    total_wall, total_cpu = sum(r[1] for r in self.rows), sum(r[2] for r in self.rows)
    return "\n".join(lines + [f"  {'total':<28} {total_wall:7.1f} s wall {total_cpu:7.1f} s CPU"])


def demo_config(args):
  cfg = tasks_config.get_config("size=demo")
  if args.steps:
    cfg.train.steps = args.steps
  cfg.train.progress = True
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  if args.examples:
    cfg.eval.update(num_examples=args.examples, batch_size=args.examples)
  return cfg


def fresh_workdir(workdir: str, name: str) -> None:
  """Remove a previous demo run (config name ``name``) in ``workdir``; refuse anything else."""
  if not os.path.exists(workdir) or not os.listdir(workdir):
    print(f"starting fresh in {workdir}")
    return
  config_path = os.path.join(workdir, "config.json")
  saved = None
  if os.path.isfile(config_path):
    with open(config_path, encoding="utf-8") as f:
      saved = json.load(f).get("name")
  if saved != name:
    raise ValueError(f"--workdir {workdir} is not empty and holds no demo run (config name "
                     f"{saved!r}, expected {name!r}); choose another --workdir")
  print(f"{workdir} holds a previous demo run: removing it and starting fresh "
        "(the demo never resumes, so every run prints the same table)")
  shutil.rmtree(workdir)


def one_device_mesh(cfg):
  """The demo runs on one device (a CPU is one device unless told otherwise)."""
  return sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])


def strategy_config(cfg, overrides: dict):
  """``cfg`` with one strategy's sample overrides; negative ``steps`` = tokens per step."""
  cfg = cfg.copy_and_resolve_references()
  overrides = dict(overrides)
  if overrides.get("steps", 0) < 0:
    overrides["steps"] = max(cfg.diffusion.block_size // -overrides["steps"], 1)
  cfg.sample.update(overrides)
  return cfg


def decode_all(cfg, params, tokenizer) -> list[dict]:
  """Pooled accuracy and tokens/forward of every strategy over the demo's tasks."""
  rows = []
  names = task_names(cfg.eval.tasks)
  for label, overrides in tqdm.tqdm(STRATEGIES, desc="decode", dynamic_ncols=True):
    scfg = strategy_config(cfg, overrides)
    sampler = bdiff.Sampler(scfg, params, tokenizer, use_mesh=False)
    e = scfg.eval
    per_task = bdiff.evaluate(sampler, names, e.num_examples, e.seed, e.batch_size)
    rows.append({**eval_tasks.pool(per_task), "strategy": label,
                 "compile_s": sampler.compile_seconds})
  return rows


def show_samples(cfg, params, tokenizer, label: str, overrides: dict) -> None:
  sampler = bdiff.Sampler(strategy_config(cfg, overrides), params, tokenizer, use_mesh=False)
  seen = training_prompts(cfg.data, cfg.train.seed)  # show prompts the model never trained on
  examples = [(get_task(name), ex) for name in task_names(cfg.eval.tasks)
              for ex in held_out_examples(name, 3, cfg.eval.seed + 1, seen.get(name, ()))]
  print(f"== samples, {label}:")
  records = sampler.sample([ex.prompt for _, ex in examples])
  for (task, ex), rec in zip(examples, records):
    mark = "ok " if task.score(ex, rec["text"], strict=True) else "err"
    print(f"  {mark} {ex.prompt!r:34} -> {rec['text']!r:20} ({rec['num_forwards']} forwards)")


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=0, help="training steps (0: the config's)")
  p.add_argument("--examples", type=int, default=0,
                 help="held-out examples per task (0: the config's eval.num_examples)")
  p.add_argument("--workdir", default="runs/demo")
  p.add_argument("--out", default=None,
                 help="also write the report (command, machine, date, table, times) here")
  args = p.parse_args(argv)
  cfg = demo_config(args)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores")
  print(f"== bdiff demo: configs/tasks.py:size=demo, tasks {cfg.data.tasks}, "
        f"{cfg.train.steps} steps, block size {cfg.diffusion.block_size}, "
        f"seq {cfg.train.seq_len}, on {jax.devices()[0].platform}")
  fresh_workdir(args.workdir, cfg.name)
  phases = Phases()
  mesh = one_device_mesh(cfg)
  out = phases.run("train (data, compile, steps)",
                   lambda: bdiff.train(cfg, args.workdir, mesh=mesh))
  saved, params, tokenizer = phases.run(
      "restore", lambda: bdiff.restore_params(args.workdir, cfg, mesh=mesh))
  print(f"{count_params(params) / 1e6:.2f}M params; final loss {out['loss']:.4f}; held-out "
        f"NELBO {out['eval_nll']:.4f} nats/token (one Monte Carlo draw)")
  rows = phases.run(f"decode ({len(STRATEGIES)} strategies)", decode_all, saved, params,
                    tokenizer)
  print("\n== held-out accuracy vs tokens per forward (greedy; ci95 = Wilson 95 % interval):")
  print(eval_tasks.format_table(rows, TABLE))
  print()
  phases.run("samples", show_samples, saved, params, tokenizer, *STRATEGIES[1])
  print("\n== wall and CPU time per phase (other processes sharing the CPU inflate wall time):")
  print(phases.summary())
  if args.out:  # the console already shows all of it: write the file without echoing it
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(report(cfg, rows, phases, out, argv, load))
  return rows


def report(cfg, rows, phases: Phases, train_out: dict, argv, load: str) -> str:
  """Markdown of one demo run: what ran, where, the table and the time of each phase."""
  args = " ".join(sys.argv[1:] if argv is None else argv)
  when = datetime.datetime.now(datetime.timezone.utc)
  return "\n".join([
      "### `make demo`", "",
      f"Command: `python -m experiments.demo{' ' + args if args else ''}` (what `make demo` "
      "runs once `.venv` exists).", "",
      f"{when:%Y-%m-%d %H:%M} UTC on {speed_bench.machine()}; load average at the start: "
      f"{load}. Model: configs/tasks.py:size=demo, tasks {cfg.data.tasks}, "
      f"{cfg.train.steps} steps, final train loss {train_out['loss']:.4f}. Greedy decoding "
      f"of {cfg.eval.num_examples} held-out prompts per task and strategy; ci95 = Wilson 95 % "
      "interval. Accuracy and tokens/forward are deterministic (a second run prints the same "
      "table); times are not.", "",
      eval_tasks.format_table(rows, TABLE), "",
      "Wall and CPU time per phase (other processes sharing the CPU inflate wall time):", "",
      "```", phases.summary(), "```", ""])


if __name__ == "__main__":
  main()
