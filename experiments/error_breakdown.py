"""Where a model fails a list task: accuracy by list length and by whether the items repeat.

  python -m experiments.error_breakdown --workdir runs/learned_mdlm_v3 --tasks reverse,sort \
      --out docs/error_breakdown_mdlm.md

Decodes held-out prompts of each list task (the run's training prompts skipped, as in
``bdiff eval``) one token per forward in the order ``--strategy`` gives, and splits the score
two ways: by list length, and by whether the prompt's items are all distinct. A model that
fails only where items repeat cannot count duplicates (with repeats, "the item after this
one" is ambiguous); one that fails on distinct items as often has not learned the positions.
``echo`` is the share of the wrong answers that are the input list unchanged.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import bdiff
from bdiff import runs
from bdiff.data import task_names, training_examples, training_prompts
from bdiff.data import tasks as tasks_lib
from bdiff.eval import speed_bench, stats
from bdiff.eval.tasks import decode_examples, decode_held_out, format_table

COLUMNS = (("task", "{}"), ("items", "{}"), ("length", "{}"), ("n", "{}"),
           ("accuracy", "{:.1f}"), ("ci95", "{}"), ("echo", "{}"))


def _row(task: str, items: str, length, cells: list[tuple[bool, bool]]) -> dict:
  wrong = [echo for ok, echo in cells if not ok]
  echo = f"{100 * sum(wrong) / len(wrong):.0f} %" if wrong else "-"
  return {"task": task, "items": items, "length": length,
          **stats.accuracy_summary(sum(ok for ok, _ in cells), len(cells)), "echo": echo}


def breakdown(task: tasks_lib.ListTask, examples: Sequence[tasks_lib.Example],
              outputs: Sequence[str]) -> list[dict]:
  """Rows for ``task``: every example, then distinct / repeated items, each by list length."""
  groups: dict[tuple[str, int], list[tuple[bool, bool]]] = {}
  everything = []
  for ex, text in zip(examples, outputs, strict=True):
    items = task.parse_prompt(ex.prompt)[0]
    cell = (task.score(ex, text), task.items.output_items(text, False) == items)
    kind = "distinct" if len(set(items)) == len(items) else "repeats"
    groups.setdefault((kind, len(items)), []).append(cell)
    everything.append(cell)
  rows = [_row(task.name, "all", "all", everything)]
  for kind in ("distinct", "repeats"):
    lengths = sorted(n for k, n in groups if k == kind)
    if lengths:
      rows.append(_row(task.name, kind, "all", sum((groups[kind, n] for n in lengths), [])))
      rows += [_row(task.name, kind, n, groups[kind, n]) for n in lengths]
  return rows


def decode(sampler: runs.Sampler, task: tasks_lib.Task, n: int, batch: int,
           prompts: str = "held_out") -> tuple[list[tasks_lib.Example], list[dict]]:
  """``(examples, records)`` on held-out prompts (the run's training prompts skipped, as in
  ``bdiff eval``) or, with ``prompts="train"``, on the run's own training prompts."""
  cfg = sampler.cfg
  if prompts == "train":
    examples = training_examples(cfg.data, task, cfg.train.seed, n)
    return examples, decode_examples(sampler, task, examples, batch, progress=True)
  seen = training_prompts(cfg.data, cfg.train.seed).get(task.name, ())
  return decode_held_out(sampler, task, n, cfg.eval.seed, batch, seen=seen, progress=True)


def run(sampler: runs.Sampler, names: Sequence[str], n: int, batch: int,
        prompts: str = "held_out") -> list[dict]:
  """Rows for each task. A model that scores much higher on its training prompts
  (``prompts="train"``) than held out has memorised them, not learned the task."""
  rows = []
  for name in names:
    task = tasks_lib.get_task(name)
    if not isinstance(task, tasks_lib.ListTask):
      raise ValueError(f"--tasks: {name!r} is not a list task (its prompts hold no item list)")
    examples, records = decode(sampler, task, n, batch, prompts)
    rows += breakdown(task, examples, [r["text"] for r in records])
  return rows


def prompts_text(cfg, args) -> str:
  if args.prompts == "train":
    return (f"the first {args.num_examples} training prompts per task (train.seed "
            f"{cfg.train.seed}): seen in training")
  return (f"{args.num_examples} held-out prompts per task (eval.seed {cfg.eval.seed}, the "
          "run's training prompts skipped)")


def markdown(rows, cfg, args, command: str) -> str:
  return "\n".join([
      *speed_bench.run_header(f"Error breakdown of {cfg.name} (block {cfg.diffusion.block_size}"
                              f", seq_len {cfg.train.seq_len})", cfg, args.workdir, command),
      f"Decoding: sample.strategy={args.strategy}, one token per forward, greedy; "
      f"{prompts_text(cfg, args)}. ci95 = Wilson 95 % interval; echo = share of the wrong "
      "answers that are the input list unchanged.", "",
      format_table(rows, COLUMNS), ""])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a task-suite run")
  parser.add_argument("--out", required=True, help="markdown output")
  parser.add_argument("--tasks", default="reverse,sort", help="comma-separated list tasks")
  parser.add_argument("--strategy", default="ar", help="sample.strategy at one token a step")
  parser.add_argument("--num_examples", type=int, default=500)
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--prompts", choices=("held_out", "train"), default="held_out",
                      help="score held-out prompts, or the run's own training prompts")
  args = parser.parse_args(argv)
  cfg, params, tokenizer = bdiff.restore_params(args.workdir)
  cfg.sample.update(strategy=args.strategy)
  rows = run(runs.Sampler(cfg, params, tokenizer), task_names(args.tasks), args.num_examples,
             args.batch, args.prompts)
  command = speed_bench.experiment_command("error_breakdown", argv)
  speed_bench.write_report(args.out, markdown(rows, cfg, args, command))
  return rows


if __name__ == "__main__":
  main()
