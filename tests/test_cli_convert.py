"""`bdiff convert` and `bdiff export` on the tiny Hugging Face fixtures: overrides on the
converted config, one-line errors, an export that does not write into a non-empty directory."""
import json
import os

import pytest

from bdiff import cli

from cli_common import call, one_line_error  # tests/cli_common.py

QWEN3 = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "qwen3")


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli") / "run"
  code = cli.main(["convert", "--from_hf", QWEN3, "--workdir", str(workdir),
                   "--config.sample.max_new_tokens=4", "--config.eval.num_examples", "5"])
  assert code == 0
  return workdir


def test_convert_applies_overrides_to_the_converted_config(run):
  saved = json.loads((run / "config.json").read_text())
  assert saved["sample"]["max_new_tokens"] == 4 and saved["eval"]["num_examples"] == 5
  assert saved["sample"]["strategy"] == "ar"  # the rest is the checkpoint's own config


def test_export_writes_a_hf_directory_and_keeps_a_full_one(capsys, run, tmp_path):
  out = tmp_path / "new" / "hf"
  code, stdout, err = call(capsys, "export", "--workdir", run, "--out", out)
  assert code == 0, err
  assert json.loads(stdout)["family"] == "qwen3"
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
  code, _, err = call(capsys, "export", "--workdir", run, "--out", out)
  assert code == 2 and "is not empty; pass --overwrite" in one_line_error(err)
  assert call(capsys, "export", "--workdir", run, "--out", out, "--overwrite")[0] == 0


@pytest.mark.parametrize("args, message", [
    (["--from_hf", "{tmp}/none"], "--from_hf {tmp}/none: no such directory"),
    (["--from_hf", QWEN3, "--config.sample.bogus=1"], "unknown key 'bogus' in sample"),
    (["--from_hf", QWEN3, "--config.sample.max_new_tokens=lots"], "expected an integer"),
])
def test_convert_usage_errors_are_one_line_and_write_nothing(capsys, tmp_path, args, message):
  workdir = tmp_path / "run"
  code, _, err = call(capsys, "convert", "--workdir", workdir,
                      *[a.format(tmp=tmp_path) for a in args])
  assert code == 2 and message.format(tmp=tmp_path) in one_line_error(err)
  assert not workdir.exists()


def test_export_needs_a_run(capsys, tmp_path):
  code, _, err = call(capsys, "export", "--workdir", tmp_path, "--out", tmp_path / "hf")
  assert code == 2 and "has no config.json" in one_line_error(err)
  code, _, err = call(capsys, "export", "--workdir", tmp_path, "--out", tmp_path / "hf",
                      "--config.sample.seed=1")
  assert code == 2 and "export takes no --config.* overrides" in one_line_error(err)
