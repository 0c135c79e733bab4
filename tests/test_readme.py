"""Every command of README's "Using it" block runs as written, twice in a row, from a fresh
directory (with small step counts: the commands are what is tested, not the training)."""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {"train": ["--config.train.steps=3", "--config.train.progress=False"],
         "eval": ["--config.eval.num_examples=4"]}


def readme_commands() -> list[str]:
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  section = text[text.index("## Using it"):]
  block = section[section.index("```bash\n") + len("```bash\n"):section.index("```\n", 8)]
  joined = re.sub(r"\\\n\s*", " ", block)
  return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def _argv(command: str) -> list[str]:
  """``.venv/bin/bdiff X ...`` as this interpreter's ``-m bdiff.cli X ...``, small settings."""
  args = shlex.split(command)
  assert args[0] == ".venv/bin/bdiff", command
  sub = args[1]
  # An explicit step count (extending a run) stays larger than the small default.
  args = [re.sub(r"(--config\.train\.steps=)\d+", r"\g<1>6", a) for a in args]
  extra = [a for a in SMALL.get(sub, []) if a.split("=")[0] not in " ".join(args)]
  return [sys.executable, "-m", "bdiff.cli", *args[1:], *extra]


def _run_all(cwd: pathlib.Path) -> None:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  for command in readme_commands():
    if command.startswith(".venv/bin/bdiff"):
      proc = subprocess.run(_argv(command), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    else:
      proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"


def test_readme_commands_run_as_written_twice(tmp_path):
  commands = readme_commands()
  assert any(c.startswith(".venv/bin/bdiff sample") for c in commands), commands
  shutil.copytree(ROOT / "configs", tmp_path / "configs")
  shutil.copy(ROOT / "README.md", tmp_path / "README.md")
  _run_all(tmp_path)
  _run_all(tmp_path)  # re-runnable: resumes, overwrites, or refuses nothing it should not
  assert (tmp_path / "out" / "samples.jsonl").read_text().count("\n") == 1
