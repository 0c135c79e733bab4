"""Task evaluation: decode the synthetic task suite and score exact answers (``bdiff eval``).

For each task (decoding.md §4, ``bdiff.data.tasks``): ``eval.num_examples`` examples drawn with
``eval.seed``, decoded with the configured ``sample.*`` strategy in batches of
``eval.batch_size``, scored leniently and strictly. Reported per task: accuracy (lenient and
strict, %), tokens per forward (generated tokens / (denoising + commit forwards), summed over
rows) and tokens per second (generated tokens / decode wall time, compilation excluded).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

from bdiff import runs as run_lib
from bdiff.data import tasks as tasks_lib
from bdiff.data.pipeline import task_names

log = logging.getLogger("bdiff")

COLUMNS = (("task", "{}"), ("n", "{}"), ("accuracy", "{:.1f}"), ("strict", "{:.1f}"),
           ("tok/fwd", "{:.2f}"), ("tok/s", "{:.1f}"), ("nfe", "{:.1f}"))


def evaluate_task(sampler: run_lib.Sampler, task: str, num_examples: int, seed: int,
                  batch_size: int) -> dict:
  """Decode and score ``num_examples`` examples of one task; returns its summary row."""
  task_obj = tasks_lib.get_task(task)
  examples = tasks_lib.make_examples(task_obj, num_examples, seed)
  records = sampler.sample([ex.prompt for ex in examples], batch_size=batch_size)
  lenient = [task_obj.score(ex, r["text"]) for ex, r in zip(examples, records)]
  strict = [task_obj.score(ex, r["text"], strict=True) for ex, r in zip(examples, records)]
  tokens = sum(r["num_tokens"] for r in records)
  forwards = sum(r["num_forwards"] for r in records)
  seconds = run_lib.batch_seconds(records, batch_size)
  n = max(len(records), 1)
  return {"task": task_obj.name, "n": len(records), "accuracy": 100.0 * sum(lenient) / n,
          "strict": 100.0 * sum(strict) / n, "tok/fwd": tokens / max(forwards, 1),
          "tok/s": tokens / max(seconds, 1e-9), "nfe": forwards / n, "tokens": tokens,
          "seconds": seconds}


def evaluate(sampler: run_lib.Sampler, tasks: Sequence[str], num_examples: int, seed: int,
             batch_size: int) -> list[dict]:
  """:func:`evaluate_task` for every task, in order."""
  return [evaluate_task(sampler, t, num_examples, seed, batch_size) for t in tasks]


def format_table(rows: Sequence[dict], columns=COLUMNS) -> str:
  """A markdown table of summary rows."""
  head = "| " + " | ".join(name for name, _ in columns) + " |"
  rule = "|" + "|".join("---" for _ in columns) + "|"
  body = ["| " + " | ".join(fmt.format(row[name]) for name, fmt in columns) + " |"
          for row in rows]
  return "\n".join([head, rule] + body)


def main(cfg, workdir: str, tasks: str | None = None) -> list[dict]:
  """``bdiff eval``: score ``tasks`` (comma-separated; default ``eval.tasks``) and print a table.

  Also appends one JSON line per task (with the sampler settings) to
  ``workdir/eval_tasks.jsonl``.
  """
  sampler = run_lib.Sampler.from_run(workdir, cfg)
  names = task_names(tasks or sampler.cfg.eval.tasks)
  e = sampler.cfg.eval
  rows = evaluate(sampler, names, e.num_examples, e.seed, e.batch_size)
  print(format_table(rows))
  print(f"strategy={sampler.config.strategy.name} block={sampler.config.block_size} "
        f"compile {sampler.compile_seconds:.1f}s (excluded)")
  with open(os.path.join(workdir, "eval_tasks.jsonl"), "a", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps({**row, "sample": sampler.cfg.sample.to_dict()}) + "\n")
  return rows
