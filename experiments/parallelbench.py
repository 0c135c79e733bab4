"""ParallelBench reproduction: accuracy vs tokens per forward, per task and decoding strategy.

  python -m experiments.parallelbench --workdir runs/learned_b4,runs/learned_mdlm \
      --out docs/parallelbench.md

ParallelBench (Kim et al. 2025, arXiv 2510.04767; furiosa-ai/ParallelBench) shows that a
sampler which commits several tokens per forward from per-position marginals cannot represent
the dependencies between them: tasks with one answer that the prompt pins down token by token
(copy, reverse, sort, the ``*_index`` edits) tolerate parallel decoding, while tasks with many
valid answers (shuffle, Latin square) collapse as tokens per step grow, even for a model that
solves them at one token per forward. This experiment measures that on bdiff's trained task
models (``configs/tasks.py:size=learned``: the block model and the MDLM of the same size).

The grid follows the benchmark's sweep, trimmed: static schedules with k tokens per step
(k = 1, 2, 4, ...; low-confidence and random remasking, LLaDA arXiv 2502.09992), Fast-dLLM's
confidence threshold and its factor rule (arXiv 2505.22618), plus left-to-right order at one
token per forward. Every setting decodes greedily the same held-out examples of every task
(``eval.num_examples`` each, ``eval.seed``); accuracy per task with its Wilson 95 % interval,
tokens per forward measured (generated tokens up to EOS / forwards, with the fused commit).
The x axis is measured, so the
schedules of different models line up by what they actually did.

``--smoke`` decodes two tasks with a few examples and two settings (CI's check that the
experiment runs end to end; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys

import bdiff
from bdiff.data import get_task, task_names
from bdiff.eval import speed_bench
from experiments.decoding_tradeoff import run_setting

SMOKE_TASKS = "copy,shuffle"


def settings(block: int, max_new_tokens: int) -> list[tuple[str, str, dict]]:
  """(curve, strategy, knobs) of the sweep; static ``steps`` give k tokens per step over the
  part of a block that is decoded (the whole answer for an MDLM whose block holds it all)."""
  span = min(block, max_new_tokens)
  ks = [k for k in (1, 2, 4, 8, 16) if k <= span]
  out = [("left to right", "ar", {})]
  out += [("static, low confidence", "static", {"steps": math.ceil(span / k),
                                                "confidence": "prob"}) for k in ks]
  # Random order from k = 2 on (at k = 1 it is one more one-token order) and while a step
  # leaves some order to choose (one step per block commits it all, whatever the order).
  out += [("static, random", "static", {"steps": math.ceil(span / k), "confidence": "random"})
          for k in ks[1:] if math.ceil(span / k) > 1]
  out += [("threshold", "threshold", {"threshold": t}) for t in (0.9, 0.7, 0.5)]
  out += [("factor", "factor", {"factor": f}) for f in (1.0, 1.9)]
  return out


def sweep(workdir: str, tasks: str | None, num_examples: int | None,
          smoke: bool) -> tuple[object, list[dict]]:
  """Every setting of :func:`settings` on the run in ``workdir``: one row per (setting, task)."""
  cfg, params, tokenizer = bdiff.restore_params(workdir)
  # Fused commit: a finished block's clean re-forward rides on the next block's first forward,
  # so one token per step costs one forward per token and the x axis starts at 1.
  cfg.sample.commit = "fused"
  if num_examples:
    cfg.eval.update(num_examples=num_examples, batch_size=min(cfg.eval.batch_size,
                                                              num_examples))
  names = task_names(tasks or (SMOKE_TASKS if smoke else cfg.eval.tasks))
  grid = settings(cfg.diffusion.block_size, cfg.sample.max_new_tokens)
  if smoke:
    grid = [grid[0], grid[-1]]
  rows = []
  for curve, strategy, knobs in grid:
    res = run_setting(cfg, params, tokenizer, names, strategy, knobs)
    for r in res["per_task"]:
      rows.append({**r, "model": f"{cfg.name}, block {cfg.diffusion.block_size}",
                   "curve": curve, "knobs": res["knobs"]})
    print(f"{workdir}: {curve} {res['knobs']}: " + ", ".join(
        f"{r['task']} {r['accuracy']:.0f}% @{r['tok/fwd']:.2f}" for r in res["per_task"]),
          flush=True)
  return cfg, rows


def plot(rows: list[dict], path: str) -> None:
  """One panel per task: accuracy vs tokens per forward, a line per (model, curve)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  models = list(dict.fromkeys(r["model"] for r in rows))
  curves = list(dict.fromkeys(r["curve"] for r in rows))
  cols = min(4, len(tasks))
  rows_of_panels = math.ceil(len(tasks) / cols)
  # The legend sits under the panels, as wide as they are (one panel, a single task, gets two
  # columns of entries), and the figure grows by its height instead of squeezing the panels.
  entries = len(models) * len(curves)
  ncol = min(5, entries, 2 * cols)
  legend_inches = 0.2 * math.ceil(entries / ncol) + 0.1
  fig, axes = plt.subplots(rows_of_panels, cols, squeeze=False,
                           figsize=(3.4 * cols, 2.9 * rows_of_panels + legend_inches))
  for ax, task in zip(axes.flat, tasks):
    for m, model in enumerate(models):
      for c, curve in enumerate(curves):
        pts = sorted((r["tok/fwd"], r["accuracy"]) for r in rows
                     if (r["task"], r["model"], r["curve"]) == (task, model, curve))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if m == 0 else "--",
                marker="osD^v"[c % 5], ms=3, color=f"C{c}",
                label=f"{curve} ({model})" if task == tasks[0] else None)
    ax.set_title(task + (" (many answers)" if get_task(task).many_answers else ""), fontsize=9)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_xlabel("tokens per forward", fontsize=8)
    ax.set_ylabel("accuracy (%)", fontsize=8)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  fig.legend(loc="lower center", ncol=ncol, fontsize=7)
  fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def table(rows: list[dict], model: str) -> str:
  """Markdown: one line per setting, accuracy [Wilson 95 %] and tokens/forward per task."""
  mine = [r for r in rows if r["model"] == model]
  tasks = list(dict.fromkeys(r["task"] for r in mine))
  head = "| setting | " + " | ".join(f"{t} acc % [95 % CI] @ tok/fwd" for t in tasks) + " |"
  lines = [head, "|" + "---|" * (len(tasks) + 1)]
  for key in dict.fromkeys((r["curve"], r["knobs"]) for r in mine):
    cells = {r["task"]: f"{r['accuracy']:.1f} {r['ci95']} @ {r['tok/fwd']:.2f}"
             for r in mine if (r["curve"], r["knobs"]) == key}
    lines.append(f"| {key[0]} ({key[1]}) | " + " | ".join(cells[t] for t in tasks) + " |")
  return "\n".join(lines)


def markdown(cfgs: list, rows: list[dict], png: str, command: str, load: str) -> str:
  n = sorted({r["n"] for r in rows})
  out = [
      "### ParallelBench reproduction: accuracy vs tokens per forward", "",
      f"Command: `{command}`", "",
      f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
      f"{speed_bench.machine()}; load average at the start {load}. Greedy decoding of n = "
      f"{'/'.join(map(str, n))} held-out examples per task and setting (eval.seed "
      f"{cfgs[0].eval.seed}), max_new_tokens={cfgs[0].sample.max_new_tokens}. Accuracy and "
      "tokens/forward are deterministic (CPU, fixed seeds); the noise is the sampling of "
      "examples, shown as each accuracy's Wilson 95 % interval: where two intervals overlap, "
      "this n does not show a difference. Tokens/forward = generated tokens / forwards, "
      "measured. Tasks marked (many answers) accept any valid answer.", ""]
  for cfg in cfgs:
    model = f"{cfg.name}, block {cfg.diffusion.block_size}"
    out += [f"#### {model}", "", table(rows, model), ""]
  out += [f"![accuracy vs tokens per forward]({os.path.basename(png)})", ""]
  return "\n".join(out)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="comma-separated runs (one curve style each)")
  p.add_argument("--out", required=True, help="markdown output; the plot goes beside it")
  p.add_argument("--tasks", default=None, help="default: each run's eval.tasks")
  p.add_argument("--num_examples", type=int, default=None)
  p.add_argument("--smoke", action="store_true", help="2 tasks, 2 settings (CI check)")
  args = p.parse_args(argv)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  cfgs, rows = [], []
  for workdir in args.workdir.split(","):
    cfg, model_rows = sweep(workdir, args.tasks, args.num_examples, args.smoke)
    cfgs.append(cfg)
    rows += model_rows
  png = os.path.splitext(args.out)[0] + ".png"
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  plot(rows, png)
  command = "python -m experiments.parallelbench " + " ".join(
      sys.argv[1:] if argv is None else argv)
  speed_bench.write_report(args.out, markdown(cfgs, rows, png, command, load))
  return rows


if __name__ == "__main__":
  main()
