"""The ``bdiff`` command: train | sample | eval | prepare | bench.

Thin by design: parse flags, call the library. Configs are ml_collections files
(``--config configs/NAME.py[:variant]`` with ``--config.section.key=value`` overrides). Commands
that read a trained run (sample, eval) load the config saved in ``--workdir`` and accept the same
``--config.*`` overrides on top of it.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

COMMANDS = ("train", "sample", "eval", "prepare", "bench")
USAGE = f"usage: bdiff {{{'|'.join(COMMANDS)}}} [flags]   (bdiff COMMAND --help for flags)"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).")
flags.DEFINE_string("prompts", None, "sample: JSONL file with a 'prompt' string per line.")
flags.DEFINE_string("out", None, "sample: output JSONL; prepare: output tensorstore dir.")
flags.DEFINE_string("tasks", None, "eval: comma-separated task names (default eval.tasks).")
flags.DEFINE_list("inputs", [], "prepare: text/jsonl files or globs.")
flags.DEFINE_string("tokenizer", "bytes", "prepare: 'bytes' or a tokenizer.json path.")
flags.DEFINE_string("text_field", "text", "prepare: JSONL field holding the text.")


def _saved_config_file(workdir: str) -> str:
  """A config file that rebuilds the config saved in a run dir (so overrides apply to it)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise app.UsageError(f"--workdir {workdir} has no config.json: train there first")
  loader = os.path.join(workdir, "saved_config.py")
  with open(loader, "w", encoding="utf-8") as f:
    f.write("import json\nfrom bdiff import config\n\n\ndef get_config(arg=None):\n"
            f"  with open({os.path.abspath(path)!r}, encoding='utf-8') as f:\n"
            "    return config.from_dict(json.load(f))\n")
  return loader


def _inject_saved_config(argv: list[str]) -> list[str]:
  """For sample/eval: use ``--workdir``'s saved config unless ``--config`` is given."""
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    return argv
  workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), None)
  if workdir is None and "--workdir" in argv:
    idx = argv.index("--workdir")
    workdir = argv[idx + 1] if idx + 1 < len(argv) else None
  if workdir is None:
    raise app.UsageError("--workdir is required")
  return argv[:1] + [f"--config={_saved_config_file(workdir)}"] + argv[1:]


def _require(name: str):
  value = getattr(FLAGS, name)
  if not value:
    raise app.UsageError(f"--{name} is required")
  return value


def cmd_train() -> None:
  from bdiff.train import loop  # pylint: disable=import-outside-toplevel
  cfg = FLAGS.config
  if cfg is None:
    raise app.UsageError("--config is required (e.g. --config configs/tiny.py)")
  result = loop.train(cfg, _require("workdir"))
  print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))


def cmd_prepare() -> None:
  from bdiff.data import get_tokenizer, prepare  # pylint: disable=import-outside-toplevel
  if not FLAGS.inputs:
    raise app.UsageError("--inputs is required")
  meta = prepare(FLAGS.inputs, _require("out"), get_tokenizer(FLAGS.tokenizer),
                 text_field=FLAGS.text_field)
  print(json.dumps(meta, indent=1))


def cmd_sample() -> None:
  from bdiff.sampling import run as sampling_run  # pylint: disable=import-outside-toplevel
  sampling_run.sample_file(FLAGS.config, _require("workdir"), _require("prompts"),
                           _require("out"))


def cmd_eval() -> None:
  from bdiff.eval import tasks as eval_tasks  # pylint: disable=import-outside-toplevel
  eval_tasks.main(FLAGS.config, _require("workdir"), FLAGS.tasks)


def cmd_bench() -> None:
  from bdiff.eval import speed_bench  # pylint: disable=import-outside-toplevel
  speed_bench.main(FLAGS.config, _require("workdir"))


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(USAGE, file=sys.stderr)
    sys.exit(2)
  command, rest = argv[1], [argv[0]] + argv[2:]
  if command in ("sample", "eval", "bench"):
    rest = _inject_saved_config(rest)
  handler = globals()[f"cmd_{command}"]
  app.run(lambda _: _run(handler), argv=[f"bdiff {command}"] + rest[1:])


def _run(handler) -> None:
  # Orbax and friends log every save at INFO through absl; keep the console for bdiff's own.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("bdiff").setLevel(logging.INFO)
  handler()


if __name__ == "__main__":
  main()
