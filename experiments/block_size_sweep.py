"""Block size sweep: held-out NELBO bound for B = 1, 4, 16 and seq_len at equal budget.

Reproduces the ordering of the BD3-LM paper (Arriola et al., arXiv 2503.09573, Table 3): AR
(B = 1) best, smaller blocks better than larger, MDLM (B = seq_len) last. B = 1 trains and
evaluates with t = 1 (every token masked, unit weight), which is exact AR teacher forcing; the
others use the log-linear schedule with per-block antithetic t and report the unclipped NELBO.

Each trained model's held-out NELBO is a Monte Carlo estimate, so it is evaluated ``--draws``
times (independent times and masks, ``bdiff.eval.nelbo``) and reported as mean ± s.d.; two
block sizes whose means differ by less than two standard errors of the difference are reported
as a tie. The spread is evaluation noise only: a second training seed would add its own.

  python -m experiments.block_size_sweep --steps 1500 --draws 5 --out docs/block_size_sweep.md

Hardware: CPU is enough (~3-4 min per block size on 2 idle cores at the defaults).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import jax

import bdiff
from bdiff import sharding
from bdiff.eval import nelbo, speed_bench, stats
from configs import tiny


def sweep_config(block_size: int, args):
  cfg = tiny.get_config()
  cfg.name = f"sweep_b{block_size}"
  cfg.model.update(d_model=args.d_model, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                   head_dim=args.d_model // 4, mlp_dim=3 * args.d_model)
  cfg.data.update(source="stdlib", max_docs=args.max_docs)
  cfg.train.update(steps=args.steps, global_batch=args.batch, seq_len=args.seq_len,
                   log_every=max(args.steps // 10, 1), eval_batches=args.eval_batches,
                   progress=args.progress)
  cfg.optim.update(lr=args.lr, warmup_steps=max(args.steps // 20, 1))
  cfg.diffusion.block_size = block_size
  if block_size == 1:  # AR: every token masked (t = 1) with unit weights is teacher forcing
    cfg.diffusion.update(clip_min=1.0, clip_max=1.0, weighting="unit_all_masked")
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  return cfg


def run(args) -> list[dict]:
  """Train each block size (a finished run in its workdir is reused) and draw its NELBO."""
  rows = []
  for b in args.block_sizes or [1, 4, 16, args.seq_len]:
    cfg = sweep_config(b, args)
    workdir = os.path.join(args.workdir, f"b{b}")
    mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    bdiff.train(cfg, workdir, mesh=mesh)
    draws = nelbo.nelbo_draws(cfg, workdir, args.draws, mesh=mesh)
    rows.append({"block_size": b, "nll_draws": [float(d["nll"]) for d in draws],
                 **train_summary(workdir)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def train_summary(workdir: str) -> dict:
  """Final train loss and training seconds (sum of logged step times) from the run's metrics."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    logged = [json.loads(line) for line in f if line.strip()]
  seconds, prev = 0.0, 0
  for row in logged:
    seconds += row["step_time_s"] * (row["step"] - prev)
    prev = row["step"]
  return {"train_loss": float(logged[-1]["loss"]), "seconds": seconds}


def label(block_size: int, seq_len: int) -> str:
  if block_size == 1:
    return "1 (AR)"
  return f"{block_size} (MDLM)" if block_size == seq_len else str(block_size)


def ranking(rows, seq_len: int) -> str:
  """Block sizes from best to worst NELBO, ``<`` between distinguishable neighbours, ``≈``
  between ties (means closer than two standard errors of their difference)."""
  ordered = sorted(rows, key=lambda r: stats.mean_sd(r["nll_draws"]).mean)
  text = label(ordered[0]["block_size"], seq_len)
  for prev, cur in zip(ordered, ordered[1:]):
    a, b = stats.mean_sd(prev["nll_draws"]), stats.mean_sd(cur["nll_draws"])
    text += (" < " if stats.distinguishable(a, b) else " ≈ ") + label(cur["block_size"], seq_len)
  return text


def markdown(rows, args, command: str) -> str:
  draws = len(rows[0]["nll_draws"]) if rows else args.draws
  lines = [f"Command: `{command}`", "",
           f"Budget: {args.steps} steps x batch {args.batch} x seq {args.seq_len} "
           f"(model d={args.d_model}, {args.layers} layers, byte tokenizer, stdlib corpus, "
           f"{args.max_docs or 'all'} docs); held-out NELBO over {args.eval_batches} batches, "
           f"mean ± s.d. over {draws} Monte Carlo draws (times and masks; one trained model "
           f"per block size, training-seed noise not included). Machine: "
           f"{speed_bench.machine()} (shared with other jobs: times are pessimistic). "
           f"Date: {datetime.date.today().isoformat()}.", "",
           "| block size | held-out NELBO (nats/byte), mean ± s.d. | PPL bound | train time (s) |",
           "|---|---|---|---|"]
  for r in rows:
    m = stats.mean_sd(r["nll_draws"])
    sd = "0 (deterministic)" if m.sd == 0 else f"{m.sd:.4f}"
    lines.append(f"| {label(r['block_size'], args.seq_len)} | {m.mean:.4f} ± {sd} | "
                 f"{math.exp(m.mean):.3f} | {r['seconds']:.0f} |")
  lines += ["", f"Ranking (best first; `≈` = within two standard errors): "
            f"{ranking(rows, args.seq_len)}", ""]
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--layers", type=int, default=3)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--max_docs", type=int, default=300)
  p.add_argument("--eval_batches", type=int, default=32)
  p.add_argument("--draws", type=int, default=5, help="Monte Carlo draws of the NELBO")
  p.add_argument("--block_sizes", type=int, nargs="*")
  p.add_argument("--workdir", default="runs/block_size_sweep")
  p.add_argument("--out", default=None, help="write the markdown table here")
  p.add_argument("--progress", action="store_true")
  args = p.parse_args(argv)
  rows = run(args)
  command = "python -m experiments.block_size_sweep " + " ".join(
      sys.argv[1:] if argv is None else argv)
  table = markdown(rows, args, command.strip())
  if args.out:
    speed_bench.write_report(args.out, table)
  else:
    print(table)
  return rows


if __name__ == "__main__":
  main()
