"""The `bdiff` command: usage, help, overrides, and one-line errors that fail before any work."""
import json
import os
import subprocess
import sys

import pytest

from bdiff import cli
from bdiff.config import base_config
from bdiff.data import store

from cli_common import call, one_line_error  # tests/cli_common.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def run_cli(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "bdiff.cli", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_usage_lists_commands():
  proc = run_cli()
  assert proc.returncode == 2 and "train|sample|eval|bench|prepare|convert|export" in proc.stderr


@pytest.mark.parametrize("command, flags", [
    ("train", ["--config", "--workdir", "--config.KEY"]),
    ("sample", ["--workdir", "--prompts", "--out", "--config.KEY"]),
    ("eval", ["--workdir", "--tasks", "--config.KEY"]),
    ("bench", ["--workdir", "--config.KEY"]),
    ("prepare", ["--inputs", "--out", "--tokenizer", "--text_field", "--overwrite",
                 "--on_error"]),
    ("convert", ["--from_hf", "--workdir", "--config.KEY"]),
    ("export", ["--workdir", "--out", "--dtype", "--overwrite"]),
])
def test_each_command_help_lists_its_flags_and_an_example(capsys, command, flags):
  code, out, _ = call(capsys, command, "--help")
  assert code == 0
  for flag in flags + ["--verbose"]:
    lines = [line for line in out.splitlines() if line.strip().startswith(flag)]
    assert lines and len(lines[0].split(None, 2)) >= 2, (flag, out)  # the flag and its help
  assert f"example:\n  bdiff {command} " in out
  if command == "sample":
    assert '{"prompt": "text"}' in out  # the prompts format


def test_bad_override_value_fails_early_naming_the_key(capsys, tmp_path):
  workdir = tmp_path / "run"
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir", str(workdir),
                      "--config.diffusion.block_size=5")
  assert code == 2 and "diffusion.block_size" in one_line_error(err)
  assert not workdir.exists()  # validation failed before the run directory was made


@pytest.mark.parametrize("override, message", [
    ("--config.model.d_modle=3", "unknown key 'd_modle' in model (known: attention,"),
    ("--config.modle.d_model=3", "unknown key 'modle' in config"),
    ("--config.train.steps=abc", "--config.train.steps='abc': expected an integer"),
    ("--config.train.progress=maybe", "expected true or false"),
    ("--config.model=3", "--config.model is a section"),
    ("--config.train.steps.x=3", "unknown key 'x' in train.steps (known: none: it is a value)"),
    ("--config.train.global_batch=0", "train.global_batch must be positive, got 0"),
])
def test_bad_override_key_or_type_is_a_usage_error(capsys, tmp_path, override, message):
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir",
                      str(tmp_path / "run"), override)
  assert code == 2, err
  assert message in one_line_error(err)


@pytest.mark.parametrize("args, message", [
    (["train", "--workdir", "w"], "--config is required (--workdir w holds no run to continue)"),
    (["train", "--config", "configs/nope.py", "--workdir", "w"], "no such file"),
    (["train", "--config", TINY, "--workdir", "w", "--bogus"],
     "unrecognized arguments: --bogus"),
    (["sample", "--workdir", "nowhere", "--prompts", "p", "--out", "o"],
     "--workdir nowhere: no such directory"),
    (["train", "--config", TINY, "--workdir", "w", "--config.train.steps"],
     "--config.train.steps needs a value"),
])
def test_usage_errors_are_one_line(capsys, tmp_path, monkeypatch, args, message):
  monkeypatch.chdir(tmp_path)
  code, _, err = call(capsys, *args)
  assert code == 2, err
  assert message in one_line_error(err)


def test_train_checks_its_run_directory_before_any_work(capsys, tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory")
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir", tmp_path)
  assert code == 2 and "checkpoints exists and is not a directory" in one_line_error(err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_verbose_adds_the_traceback(capsys, tmp_path):
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir",
                      str(tmp_path), "--config.diffusion.block_size=5", "--verbose")
  assert code == 2 and "Traceback" in err and "bdiff: error: " in err.splitlines()[-1]


def test_overrides_parse_to_the_field_type():
  cfg = base_config()
  cli.apply_overrides(cfg, [("train.steps", "7"), ("optim.lr", "1e-3"),
                            ("train.progress", "false"), ("sample.strategy", "threshold"),
                            ("mesh.rules", "[['batch', 'data']]"), ("optim.b1", "1")])
  assert (cfg.train.steps, cfg.optim.lr, cfg.train.progress) == (7, 1e-3, False)
  assert cfg.sample.strategy == "threshold" and cfg.mesh.rules == [["batch", "data"]]
  assert isinstance(cfg.optim.b1, float)
  rest, overrides = cli.split_overrides(["--workdir", "w", "--config.a.b=1", "--config.c", "2"])
  assert rest == ["--workdir", "w"] and overrides == [("a.b", "1"), ("c", "2")]


def test_prepare_writes_a_token_store(tmp_path):
  src = tmp_path / "a.txt"
  src.write_text("hello world\n")
  proc = run_cli("prepare", "--inputs", str(src), "--out", str(tmp_path / "new" / "store"))
  assert proc.returncode == 0, proc.stderr
  assert '"num_tokens": 13' in proc.stdout  # 12 bytes + EOS


def test_prepare_keeps_an_existing_dataset(capsys, tmp_path):
  good = tmp_path / "good.txt"
  good.write_text("a good dataset")
  out = str(tmp_path / "ds")
  assert call(capsys, "prepare", "--inputs", str(good), "--out", out)[0] == 0
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": oops}\n')
  (tmp_path / "empty.txt").write_text("")
  code, _, err = call(capsys, "prepare", "--inputs", str(bad), "--out", out)
  assert code == 1 and "already holds a prepared dataset" in one_line_error(err)
  code, _, err = call(capsys, "prepare", "--inputs", str(bad), "--out", out, "--overwrite")
  assert code == 1 and "bad.jsonl:2: not valid JSON" in one_line_error(err)
  code, _, err = call(capsys, "prepare", "--inputs", str(tmp_path / "empty.txt"), "--out", out,
                      "--overwrite")
  assert code == 1 and "hold no text" in one_line_error(err)
  _, meta = store.open_tokens(out)  # still the good dataset
  assert meta["num_tokens"] == len("a good dataset") + 1


def test_prepare_on_error_skip_reports_the_count(capsys, tmp_path):
  src = tmp_path / "in.jsonl"
  src.write_text('{"text": "one"}\n{"text": null}\n{"text": 12345}\n')
  code, out, err = call(capsys, "prepare", "--inputs", str(src), "--out",
                        str(tmp_path / "o"), "--on_error=skip")
  assert code == 0, err
  meta = json.loads(out)
  assert (meta["num_docs"], meta["skipped"]) == (1, 2)
  assert "in.jsonl:2: text_field 'text' must be a string, got null" in err


def test_train_without_config_continues_the_runs_own_config(capsys, tmp_path):
  workdir = str(tmp_path / "run")
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir", workdir,
                      "--config.train.steps=2", "--config.train.progress=False")
  assert code == 0, err
  # No --config: the run's config.json, with steps extended (a harmless change).
  code, out, err = call(capsys, "train", "--workdir", workdir, "--config.train.steps=4")
  assert code == 0, err
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f][-1] == 4
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["name"] == "tiny" and saved["train"]["steps"] == 4
