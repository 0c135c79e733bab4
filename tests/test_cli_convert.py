"""`bdiff convert` and `bdiff export` on the tiny Hugging Face fixtures: overrides on the
converted config, a checkpoint of the weights alone that `bdiff train` continues with a fresh
optimizer, one-line errors, an export that does not write into a non-empty directory."""
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from bdiff import cli, runs
from bdiff.train import checkpointing

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


def test_converted_checkpoint_holds_weights_only_and_trains(capsys, run, tmp_path):
  """No optimizer moments on disk (they were zeros, twice the weights); the first `bdiff train`
  creates them, and its own checkpoint then holds the full state."""
  assert checkpointing.saved_items(str(run)) == {"params"}
  workdir = tmp_path / "run"
  shutil.copytree(run, workdir)
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"text": f"def f{i}(a):\n    return a + {i}\n"}) + "\n"
                            for i in range(64)), encoding="utf-8")
  code, _, err = call(capsys, "train", "--workdir", workdir, "--allow_config_change",
                      "--config.data.source=text", f"--config.data.path={corpus}",
                      "--config.data.valid_fraction=0.3",
                      "--config.train.steps=1", "--config.train.seq_len=16",
                      "--config.train.global_batch=8", "--config.train.eval_batches=1",
                      "--config.train.progress=False", "--config.train.log_every=1")
  assert code == 0, err
  assert checkpointing.saved_items(str(workdir)) >= {"params", "opt_state", "step"}
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == 1 and math.isfinite(metrics[-1]["loss"])


def test_a_run_configured_with_ema_samples_the_converted_weights(run, tmp_path):
  """The weights-only checkpoint has no EMA copy: inference reads its params."""
  workdir = tmp_path / "ema"
  assert cli.main(["convert", "--from_hf", QWEN3, "--workdir", str(workdir),
                   "--config.optim.ema_decay=0.999"]) == 0
  cfg, params, _ = runs.restore_params(str(workdir))
  assert cfg.optim.ema_decay == 0.999
  _, plain, _ = runs.restore_params(str(run))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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
