"""`bdiff sample | eval` on a saved run: the run's config plus --config.* overrides, inputs and
outputs checked before the model is restored, nothing written into the run but results."""
import json
import os

import pytest

from bdiff import config as config_lib
from bdiff import runs
from bdiff import sharding as sharding_lib
from bdiff.eval import speed_bench
from bdiff.train import checkpointing
from bdiff.train import state as state_lib

from cli_common import call, one_line_error  # tests/cli_common.py


@pytest.fixture(scope="module", name="workdir")
def _workdir(tmp_path_factory):
  """A run as training leaves it (config.json and a checkpoint), random weights."""
  cfg = config_lib.base_config()
  cfg.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32")
  cfg.diffusion.block_size = 4
  cfg.train.seq_len = 16
  cfg.sample.update(max_new_tokens=8, batch_size=2)
  cfg.eval.update(num_examples=2, batch_size=2)
  workdir = tmp_path_factory.mktemp("run")
  mesh = sharding_lib.make_mesh(cfg.mesh)
  model, tx, _, shardings = state_lib.build(cfg, mesh)
  state = state_lib.init_state(model, tx, cfg, mesh, shardings)
  checkpointing.save(checkpointing.manager(str(workdir)), 1, state,
                     config_dict=config_lib.to_dict(cfg), data_position={})
  (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
  return workdir


@pytest.fixture(name="restores")
def _restores(monkeypatch):
  calls = []
  original = runs.restore_params

  def spy(*args, **kwargs):
    calls.append(args[0])
    return original(*args, **kwargs)

  monkeypatch.setattr(runs, "restore_params", spy)
  return calls


def test_sample_applies_overrides_and_creates_the_output_directory(capsys, tmp_path, workdir):
  before = sorted(os.listdir(workdir))
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "ab"}\n{"prompt": "cde"}\n{"prompt": "f"}\n')
  out = tmp_path / "new" / "dir" / "samples.jsonl"
  code, _, err = call(capsys, "sample", "--workdir", workdir, "--prompts", prompts, "--out", out,
                      "--config.sample.max_new_tokens=2", "--config.sample.temperature", "0.5")
  assert code == 0, err
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt"] for r in records] == ["ab", "cde", "f"]
  assert all(1 <= r["num_tokens"] <= 2 for r in records)  # the override took effect
  assert sorted(os.listdir(workdir)) == before  # no saved_config.py or anything else


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{"prompt": oops}\n', "p.jsonl:2: not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "x"}\n', "p.jsonl:2: expected an object with a 'prompt' string"),
])
def test_bad_prompts_fail_before_the_model_is_restored(capsys, tmp_path, workdir, restores,
                                                       content, message):
  prompts = tmp_path / "p.jsonl"
  prompts.write_text(content)
  code, _, err = call(capsys, "sample", "--workdir", workdir, "--prompts", prompts, "--out",
                      tmp_path / "o.jsonl")
  assert code == 1 and message in one_line_error(err)
  assert not restores and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("flags, code, message", [
    (["--out", "{tmp}"], 2, "is a directory; give a file name"),
    (["--prompts", "{tmp}/missing.jsonl"], 2, "--prompts {tmp}/missing.jsonl: no such file"),
    (["--config.sample.temprature=1"], 2, "unknown key 'temprature' in sample"),
    (["--config.sample.strategy=bogus"], 2, "sample.strategy"),
    (["--config", "configs/tiny.py"], 2, "unrecognized arguments: --config"),
])
def test_sample_checks_flags_before_any_work(capsys, tmp_path, workdir, restores, flags, code,
                                            message):
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "ok"}\n')
  args = {"--prompts": str(prompts), "--out": str(tmp_path / "o.jsonl")}
  extra = [f.format(tmp=tmp_path) for f in flags]
  for flag in list(args):
    if flag in extra:
      del args[flag]
  got, _, err = call(capsys, "sample", "--workdir", workdir,
                     *[x for kv in args.items() for x in kv], *extra)
  assert got == code, err
  assert message.format(tmp=tmp_path) in one_line_error(err)
  assert not restores


def test_eval_uses_the_saved_config_with_overrides(capsys, workdir):
  code, out, err = call(capsys, "eval", "--workdir", workdir, "--tasks", "copy",
                        "--config.eval.num_examples=3", "--config.sample.strategy=threshold")
  assert code == 0, err
  assert "| copy | 3 |" in out and "strategy=threshold" in out
  assert not (workdir / "saved_config.py").exists()


def test_eval_checks_task_names_before_the_model_is_restored(capsys, workdir, restores):
  code, _, err = call(capsys, "eval", "--workdir", workdir, "--tasks", "copy,nosuch")
  assert code == 2 and "--tasks: unknown task 'nosuch'; known: [" in one_line_error(err)
  assert not restores


def test_a_run_without_config_is_named(capsys, tmp_path):
  code, _, err = call(capsys, "eval", "--workdir", tmp_path)
  assert code == 2 and "has no config.json: train there first" in one_line_error(err)


def test_a_run_without_checkpoint_is_named_and_left_as_it_was(capsys, tmp_path, workdir):
  (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
  code, _, err = call(capsys, "bench", "--workdir", tmp_path)
  assert code == 1 and "no checkpoint under" in one_line_error(err)
  assert os.listdir(tmp_path) == ["config.json"]


def test_experiment_reports_name_the_checkpoint_step_not_the_schedule(workdir):
  """A run stopped early (or resumed on a longer schedule) is described by the step of the
  weights it loads; ``train.steps`` only when there is no checkpoint."""
  cfg = runs.run_config(str(workdir))
  assert cfg.train.steps != 1
  assert speed_bench.trained_steps(cfg, str(workdir)) == 1
  assert speed_bench.trained_steps(cfg, str(workdir / "elsewhere")) == cfg.train.steps
