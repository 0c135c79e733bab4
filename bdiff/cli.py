"""The ``bdiff`` command: train | sample | eval | bench | prepare | convert | export.

Thin by design: parse flags, call the library. ``train`` reads an ml_collections config file
(``--config configs/NAME.py[:variant]``); the commands that read a trained run (sample, eval,
bench) load the config saved in ``--workdir`` (``config.json``); ``convert`` starts from the
config of a Hugging Face checkpoint. Every command that uses a config takes
``--config.KEY=VALUE`` overrides, parsed to the type of the field they replace.

Errors: a bad flag, key, value or path prints one line ``bdiff: error: ...`` on stderr and
exits 2 (usage) or 1 (a failure while running); ``--verbose`` adds the traceback. Any other
exception is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import logging as absl_logging
import ml_collections

from bdiff import config as config_lib
from bdiff import convert
from bdiff import distributed
from bdiff.convert import hf_export
from bdiff import runs
from bdiff.data import get_task, get_tokenizer, prepare, store, task_names
from bdiff.eval import speed_bench
from bdiff.eval import tasks as eval_tasks
from bdiff.train import loop, rundir

log = logging.getLogger("bdiff")

# Raised by the library on bad input (a key, value, file): one line, exit 1.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               FileExistsError, PermissionError, FloatingPointError,
               rundir.RunDirError)


class UsageError(Exception):
  """A bad command line (flag, config key or value): one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
  """argparse that raises UsageError (one line, our format) instead of printing usage."""

  def error(self, message):
    raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------------------------
# Configs: files, saved runs, and --config.KEY=VALUE overrides.


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separate ``--config.KEY=VALUE`` / ``--config.KEY VALUE`` from the other arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, eq, raw = arg[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise UsageError(f"--config.{key} needs a value (--config.{key}=VALUE)")
        raw, i = argv[i + 1], i + 1
      overrides.append((key, raw))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          list: "a list like [1, 2]", tuple: "a tuple like (1, 2)", dict: "a dict"}


def _kind(value) -> str:
  return _KINDS.get(type(value), f"a {type(value).__name__}")


def parse_value(key: str, raw: str, current: Any) -> Any:
  """``raw`` (command-line text) as a value of ``current``'s type, or UsageError naming key."""
  if isinstance(current, ml_collections.ConfigDict):
    raise UsageError(f"--config.{key} is a section, not a value; set one of its keys: "
                     f"{', '.join(sorted(current.keys()))}")
  try:
    if isinstance(current, bool):
      if raw.lower() not in _TRUE + _FALSE:
        raise ValueError
      return raw.lower() in _TRUE
    if isinstance(current, (int, float)):
      return type(current)(raw)
    if isinstance(current, str):
      return raw
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    if current is None:
      return raw  # an unset field: keep the text
    raise UsageError(f"--config.{key}={raw!r}: expected {_kind(current)} "
                     f"(current value {current!r})") from None
  if current is not None and not isinstance(value, type(current)):
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
      return type(current)(value)
    raise UsageError(f"--config.{key}={raw!r}: expected {_kind(current)} "
                     f"(current value {current!r})")
  return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]):
  """Set each ``(dotted key, text)`` on ``cfg`` (in place); unknown keys are a UsageError."""
  for key, raw in overrides:
    node, parts = cfg, key.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parts[:depth]) or "config"
        known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) \
            else "none: it is a value"
        raise UsageError(f"--config.{key}: unknown key {part!r} in {where} (known: {known})")
      if depth < len(parts) - 1:
        node = node[part]
    try:
      node[parts[-1]] = parse_value(key, raw, node[parts[-1]])
    except TypeError as e:
      raise UsageError(f"--config.{key}={raw!r}: {e}") from None
  return cfg


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``configs/NAME.py[:variant]``: the file's ``get_config(variant)``."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config {spec}: no such file {path!r}")
  module_spec = importlib.util.spec_from_file_location("bdiff_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config {spec}: {path} defines no get_config()")
  try:
    return module.get_config(variant) if variant else module.get_config()
  except (ValueError, TypeError, KeyError) as e:
    raise UsageError(f"--config {spec}: {e}") from e


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` was trained with (its ``config.json``)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise UsageError(f"--workdir {workdir}: no such directory")
  if not os.path.isfile(path):
    raise UsageError(f"--workdir {workdir} has no config.json: train there first "
                     f"(bdiff train --config ... --workdir {workdir})")
  with open(path, encoding="utf-8") as f:
    return config_lib.from_dict(json.load(f))


def output_file(path: str, flag: str) -> str:
  """Check an output file's place before any work: its directory is created if missing (by
  process 0 of a multi-host run, the one that writes it)."""
  if os.path.isdir(path):
    raise UsageError(f"{flag} {path} is a directory; give a file name")
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.exists(parent) and not os.path.isdir(parent):
    raise UsageError(f"{flag} {path}: {parent} is not a directory")
  if not distributed.is_main_process():
    return path
  os.makedirs(parent, exist_ok=True)
  if not os.access(parent, os.W_OK):
    raise UsageError(f"{flag} {path}: directory {parent} is not writable")
  return path


def _existing_file(path: str, flag: str) -> str:
  if not os.path.isfile(path):
    raise UsageError(f"{flag} {path}: no such file")
  return path


def _not_a_file(path: str, flag: str) -> None:
  """A directory to be written must not be a file (found now, not when the work is done)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"{flag}: {path} exists and is not a directory")


def validate(cfg) -> ml_collections.ConfigDict:
  """The library's validation, before any work: a bad value is a usage error (exit 2)."""
  try:
    config_lib.validate(cfg)
  except ValueError as e:
    raise UsageError(str(e)) from e
  return cfg


def _run_config(args, overrides) -> ml_collections.ConfigDict:
  return validate(apply_overrides(load_run_config(args.workdir), overrides))


# ---------------------------------------------------------------------------------------------
# Commands: each takes the parsed flags and the --config.* overrides.


def cmd_train(args, overrides) -> None:
  # Without --config, continue the run in --workdir (a converted checkpoint, or a run to
  # extend or fine-tune) from its own config.json.
  if not args.config and not os.path.isfile(os.path.join(args.workdir, "config.json")):
    raise UsageError(f"--config is required (--workdir {args.workdir} holds no run to continue)")
  base = load_config_file(args.config) if args.config else load_run_config(args.workdir)
  cfg = apply_overrides(base, overrides)
  _not_a_file(args.workdir, "--workdir")
  _not_a_file(os.path.join(args.workdir, "checkpoints"), "--workdir")
  validate(cfg)  # before the run directory is created
  result = loop.train(cfg, args.workdir, allow_config_change=args.allow_config_change)
  print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))


def cmd_sample(args, overrides) -> None:
  cfg = _run_config(args, overrides)
  cfg.sample.chat = cfg.sample.chat or args.chat
  _existing_file(args.prompts, "--prompts")
  runs.sample_file(cfg, args.workdir, args.prompts, output_file(args.out, "--out"))


def cmd_eval(args, overrides) -> None:
  cfg = _run_config(args, overrides)
  for name in task_names(args.tasks or cfg.eval.tasks):  # before the model is restored
    try:
      get_task(name)
    except ValueError as e:
      raise UsageError(f"--tasks: {e}") from e
  eval_tasks.main(cfg, args.workdir, args.tasks)


def cmd_bench(args, overrides) -> None:
  speed_bench.main(_run_config(args, overrides), args.workdir)


def cmd_prepare(args, overrides) -> None:
  del overrides  # none (main() checks)
  inputs = [p for arg in args.inputs for p in arg.split(",") if p]
  store.check_output_dir(os.path.abspath(args.out), args.overwrite)
  tokenizer = get_tokenizer(args.tokenizer)
  meta = prepare(inputs, args.out, tokenizer, text_field=args.text_field,
                 overwrite=args.overwrite, on_error=args.on_error)
  print(json.dumps({k: v for k, v in meta.items() if k != "skipped_examples"}, indent=1))
  for example in meta["skipped_examples"]:
    print(f"skipped {example}", file=sys.stderr)


def cmd_convert(args, overrides) -> None:
  if not os.path.isdir(args.from_hf):
    raise UsageError(f"--from_hf {args.from_hf}: no such directory")
  _not_a_file(args.workdir, "--workdir")
  cfg = validate(apply_overrides(convert.hf_config(args.from_hf), overrides))
  print(json.dumps(convert.convert_from_hf(args.from_hf, args.workdir, cfg), indent=1))


def cmd_export(args, overrides) -> None:
  del overrides  # none (main() checks)
  load_run_config(args.workdir)  # a run is there
  _not_a_file(args.out, "--out")
  if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
    raise UsageError(f"--out {args.out} is not empty; pass --overwrite to write into it")
  print(json.dumps(convert.export_to_hf(args.workdir, args.out, dtype=args.dtype), indent=1))


# ---------------------------------------------------------------------------------------------
# Flags and help.

# Multi-host runs (jax.distributed): all three on every host, or none (auto-detected on TPU
# pods, SLURM and Open MPI; a single process otherwise).
MULTI_HOST = ("train", "sample", "eval", "export")
_MULTI_HOST_FLAGS = {
    "coordinator_address": dict(metavar="HOST:PORT", help="multi-host: process 0's address"),
    "num_processes": dict(type=int, metavar="N", help="multi-host: number of processes"),
    "process_id": dict(type=int, metavar="I", help="multi-host: this process's index"),
}
_OVERRIDE_HELP = "set one config key (to its type), repeatable: --config.sample.threshold=0.9"
_RUN = dict(required=True, help="a run directory (made by bdiff train or bdiff convert)")


def _HelpFormatter(prog):  # pylint: disable=invalid-name
  # Wide enough that every flag's help fits on its line.
  return argparse.RawDescriptionHelpFormatter(prog, max_help_position=28, width=120)


def _add_command(sub, name: str, summary: str, example: str, **flags) -> None:
  """One command: its ``flags`` (name -> add_argument keywords, in help order), --verbose,
  and the --config.KEY=VALUE line unless it uses no config (NO_OVERRIDES)."""
  p = sub.add_parser(name, help=summary, description=summary, epilog=f"example:\n  {example}",
                     formatter_class=_HelpFormatter, allow_abbrev=False)
  for flag, kwargs in flags.items():
    p.add_argument(f"--{flag}", **kwargs)
  if name not in NO_OVERRIDES:
    # split_overrides() takes these out before argparse sees them; this only documents them.
    p.add_argument("--config.KEY", metavar="VALUE", dest="_override_help", help=_OVERRIDE_HELP)
  if name in MULTI_HOST:
    for flag, kwargs in _MULTI_HOST_FLAGS.items():
      p.add_argument(f"--{flag}", default=None, **kwargs)
  p.add_argument("--verbose", action="store_true", help="show tracebacks of errors")


def _add_commands(sub) -> None:
  _add_command(
      sub, "train", "train a model, or resume the run in --workdir",
      "bdiff train --config configs/tiny.py --workdir runs/tiny --config.train.steps=100",
      config=dict(default=None, metavar="FILE[:VARIANT]",
                  help="config file, e.g. configs/tasks.py:block_size=8 (default: the run's "
                  "own config.json, to continue a run or fine-tune a converted one)"),
      workdir=dict(required=True, help="run directory (checkpoints, metrics)"),
      allow_config_change=dict(action="store_true", help="resume although the config changed "
                               "(changes recorded in WORKDIR/history.jsonl)"))
  _add_command(
      sub, "sample", "sample text for each prompt of a JSONL file",
      "bdiff sample --workdir runs/tasks --prompts prompts.jsonl --out samples.jsonl "
      "--config.sample.strategy=threshold",
      workdir=_RUN, prompts=dict(required=True, help='JSONL file, one {"prompt": "text"} per '
                                 "line (checked before the model loads)"),
      out=dict(required=True, help="output JSONL, one record per prompt (directory created)"),
      chat=dict(action="store_true", help="render each prompt with the tokenizer's chat template "
                "and stop at its end-of-turn tokens (= --config.sample.chat=True); a line may "
                'then also be {"messages": [...]}'))
  _add_command(
      sub, "eval", "score the synthetic task suite (accuracy, tokens per forward)",
      "bdiff eval --workdir runs/tasks --tasks copy,reverse", workdir=_RUN,
      tasks=dict(default=None, help="comma-separated task names (default: the run's eval.tasks)"))
  _add_command(sub, "bench", "time the run's sampler at batch 1 and sample.batch_size",
               "bdiff bench --workdir runs/tasks", workdir=_RUN)
  _add_command(
      sub, "prepare", "tokenize text/JSONL files into a token store for training",
      "bdiff prepare --inputs 'corpus/*.jsonl' --out data/corpus --on_error=skip",
      inputs=dict(required=True, nargs="+", metavar="FILE",
                  help="files or quoted globs: a text file is one document, a .jsonl line one"),
      out=dict(required=True, help="output directory (renamed into place when done)"),
      tokenizer=dict(default="bytes", help="'bytes' (default) or a Hugging Face tokenizer.json"),
      text_field=dict(default="text", help="JSONL field holding the text"),
      overwrite=dict(action="store_true", help="replace a dataset already in --out"),
      on_error=dict(choices=store.ON_ERROR, default="fail", help="bad line (not UTF-8/JSON/a "
                    "text string): fail at file:line, or skip+count"))
  _add_command(
      sub, "convert", "make a run from a Hugging Face checkpoint (Llama, Qwen2/2.5, Qwen3, "
      "SDAR, Fast-dLLM v2, Dream, LLaDA)",
      "bdiff convert --from_hf qwen3-0.6b/ --workdir runs/qwen3 "
      "--config.sample.max_new_tokens=64",
      from_hf=dict(required=True, metavar="DIR",
                   help="config.json, *.safetensors and tokenizer.json of the checkpoint"),
      workdir=dict(required=True, help="the new run directory (no checkpoint yet)"))
  _add_command(
      sub, "export", "write a run as a Hugging Face checkpoint directory",
      "bdiff export --workdir runs/qwen3 --out qwen3-export/", workdir=_RUN,
      out=dict(required=True, metavar="DIR", help="output directory (created)"),
      dtype=dict(default=None, choices=sorted(hf_export.NUMPY_DTYPES),
                 help="tensor dtype (default: the imported checkpoint's, else float32)"),
      overwrite=dict(action="store_true", help="write into a non-empty --out"))


COMMANDS: dict[str, Callable] = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval,
                                 "bench": cmd_bench, "prepare": cmd_prepare,
                                 "convert": cmd_convert, "export": cmd_export}
NO_OVERRIDES = ("prepare", "export")  # commands that use no config
USAGE = f"usage: bdiff {{{'|'.join(COMMANDS)}}} [flags]   (bdiff COMMAND --help for flags)"


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="bdiff", description="Block diffusion language models.",
                   allow_abbrev=False)
  sub = parser.add_subparsers(dest="command", metavar="{" + "|".join(COMMANDS) + "}",
                              parser_class=_Parser)
  _add_commands(sub)
  return parser


# ---------------------------------------------------------------------------------------------
# Entry point.


@contextlib.contextmanager
def _console_logging():
  """bdiff's log lines on stderr while a command runs (removed after: main() may run again)."""
  # Orbax and friends log every save at INFO through absl; keep the console for bdiff's own.
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  level, propagate = log.level, log.propagate
  log.setLevel(logging.INFO)
  log.addHandler(handler)
  log.propagate = False  # once: a library may have configured the root logger too
  try:
    yield
  finally:
    log.removeHandler(handler)
    log.setLevel(level)
    log.propagate = propagate


def _start_hosts(args) -> None:
  """jax.distributed before the first device query (config validation resolves the mesh)."""
  try:
    distributed.initialize(distributed.DistributedArgs(
        args.coordinator_address, args.num_processes, args.process_id))
  except ValueError as e:
    raise UsageError(str(e)) from e


def _fail(message: str, code: int, verbose: bool) -> int:
  if verbose:
    traceback.print_exc()
  print(f"bdiff: error: {message}", file=sys.stderr)
  return code


def main(argv: Sequence[str] | None = None) -> int:
  """Run ``bdiff COMMAND [flags]``; returns the exit status (the console script exits with it)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = "--verbose" in argv
  if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
    print(USAGE, file=sys.stderr)
    return 2
  try:
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)
    if overrides and args.command in NO_OVERRIDES:
      raise UsageError(f"{args.command} takes no --config.* overrides "
                       f"(got --config.{overrides[0][0]})")
    if args.command in MULTI_HOST:
      _start_hosts(args)
    with _console_logging():
      COMMANDS[args.command](args, overrides)
  except UsageError as e:
    return _fail(str(e), 2, verbose)
  except USER_ERRORS as e:
    return _fail(str(e) or type(e).__name__, 1, verbose)
  except KeyboardInterrupt:
    return _fail("interrupted", 130, verbose)
  except SystemExit as e:  # --help
    return e.code if isinstance(e.code, int) else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
