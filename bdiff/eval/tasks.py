"""Task evaluation: decode the synthetic task suite and score exact answers (``bdiff eval``).

For each task (``bdiff.data.tasks``, after ParallelBench, arXiv 2510.04767): ``eval.num_examples``
examples drawn with ``eval.seed``, skipping any whose prompt the run trained on (a task-suite
run's training prompts are regenerated from its config: ``data.training_prompts``), decoded
with the configured ``sample.*`` strategy in batches of ``eval.batch_size``, scored leniently
and strictly. Reported per task: the number of examples ``n``, accuracy (lenient, %) with its
Wilson 95 % interval (``bdiff.eval.stats``), strict accuracy, tokens per forward (generated
tokens / (denoising + commit forwards), summed over rows) and tokens per second (generated
tokens / decode wall time, compilation excluded).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Collection, Sequence

from bdiff import distributed
from bdiff import runs as run_lib
from bdiff.data import tasks as tasks_lib
from bdiff.data.pipeline import task_names, training_prompts
from bdiff.eval import stats

log = logging.getLogger("bdiff")

COLUMNS = (("task", "{}"), ("n", "{}"), ("accuracy", "{:.1f}"), ("ci95", "{}"),
           ("strict", "{:.1f}"), ("tok/fwd", "{:.2f}"), ("tok/s", "{:.1f}"), ("nfe", "{:.1f}"))


def _summary(name: str, correct: int, strict: int, n: int, tokens: int, forwards: int,
             seconds: float) -> dict:
  return {"task": name, **stats.accuracy_summary(correct, n),
          "strict": 100.0 * strict / n, "strict_correct": strict,
          "tok/fwd": tokens / max(forwards, 1), "tok/s": tokens / max(seconds, 1e-9),
          "nfe": forwards / n, "tokens": tokens, "forwards": forwards, "seconds": seconds}


def _warn_if_truncated(sampler: run_lib.Sampler, task: str,
                       examples: Sequence[tasks_lib.Example]) -> None:
  """Warn when sample.max_new_tokens cannot hold some reference answers (the names tasks'
  lists run to hundreds of bytes): those examples would be scored wrong however good the
  model is."""
  need = max(len(sampler.tokenizer.encode(ex.answer)) for ex in examples)
  budget = sampler.cfg.sample.max_new_tokens
  if need > budget:
    log.warning("task %s: reference answers take up to %d tokens but sample.max_new_tokens="
                "%d; truncated answers are scored wrong", task, need, budget)


def decode_held_out(sampler: run_lib.Sampler, task_obj: tasks_lib.Task, num_examples: int,
                    seed: int, batch_size: int, *, seen: Collection[str] = (),
                    progress: bool = False) -> tuple[list[tasks_lib.Example], list[dict]]:
  """``(examples, records)``: ``num_examples`` examples of one task whose prompts are not in
  ``seen`` (the run's training prompts), and the sampler's record for each."""
  if num_examples <= 0:
    raise ValueError(f"eval.num_examples must be positive, got {num_examples}")
  examples = tasks_lib.held_out_examples(task_obj, num_examples, seed, seen)
  return examples, decode_examples(sampler, task_obj, examples, batch_size, progress=progress)


def decode_examples(sampler: run_lib.Sampler, task_obj: tasks_lib.Task,
                    examples: Sequence[tasks_lib.Example], batch_size: int, *,
                    progress: bool = False) -> list[dict]:
  """The sampler's record for each example's prompt (warning first when the answer budget
  cannot hold some reference answers)."""
  _warn_if_truncated(sampler, task_obj.name, examples)
  return sampler.sample([ex.prompt for ex in examples], batch_size=batch_size,
                        progress=progress)


def evaluate_task(sampler: run_lib.Sampler, task: str, num_examples: int, seed: int,
                  batch_size: int, *, seen: Collection[str] = (),
                  progress: bool = False) -> dict:
  """Decode and score ``num_examples`` examples of one task whose prompts are not in ``seen``
  (the run's training prompts); returns its summary row."""
  task_obj = tasks_lib.get_task(task)
  examples, records = decode_held_out(sampler, task_obj, num_examples, seed, batch_size,
                                      seen=seen, progress=progress)
  lenient = sum(task_obj.score(ex, r["text"]) for ex, r in zip(examples, records))
  strict = sum(task_obj.score(ex, r["text"], strict=True) for ex, r in zip(examples, records))
  return _summary(task_obj.name, lenient, strict, len(records),
                  tokens=sum(r["num_tokens"] for r in records),
                  forwards=sum(r["num_forwards"] for r in records),
                  seconds=run_lib.batch_seconds(records, batch_size))


def evaluate(sampler: run_lib.Sampler, tasks: Sequence[str], num_examples: int, seed: int,
             batch_size: int, *, progress: bool = False) -> list[dict]:
  """:func:`evaluate_task` for every task, in order, each held out from the sampler's run."""
  seen = training_prompts(sampler.cfg.data, sampler.cfg.train.seed)
  return [evaluate_task(sampler, t, num_examples, seed, batch_size, seen=seen.get(t, ()),
                        progress=progress) for t in tasks]


def pool(rows: Sequence[dict], name: str = "all") -> dict:
  """One summary row over several tasks' rows: counts are summed, so accuracy is pooled over
  every example (its interval uses the total ``n``), and tokens/forward is total tokens over
  total forwards."""
  if not rows:
    raise ValueError("pool: no rows")
  total = lambda key: sum(r[key] for r in rows)  # noqa: E731
  return _summary(name, total("correct"), total("strict_correct"), total("n"),
                  total("tokens"), total("forwards"), total("seconds"))


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
  rows = evaluate(sampler, names, e.num_examples, e.seed, e.batch_size, progress=True)
  if not distributed.is_main_process():  # every process decodes (its rows); one reports
    return rows
  print(format_table(rows + [pool(rows)] if len(rows) > 1 else rows))
  print(f"strategy={sampler.config.strategy.name} block={sampler.config.block_size} "
        f"compile {sampler.compile_seconds:.1f}s (excluded); ci95 = Wilson 95 % interval "
        f"of the accuracy over n examples (eval.seed {e.seed}; prompts seen in training "
        f"skipped)")
  with open(os.path.join(workdir, "eval_tasks.jsonl"), "a", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps({**row, "sample": sampler.cfg.sample.to_dict()}) + "\n")
  return rows
