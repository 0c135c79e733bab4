"""Training: sharding equivalence, exact resume, NaN detection, early config errors."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from bdiff import config as config_lib
from bdiff import sharding
from bdiff.train import loop, state as state_lib, step as step_lib
from configs import tasks as tasks_config
from configs import tiny
from resume_common import train_straight_and_resumed  # tests/train/resume_common.py


def tiny_cfg(**train):
  cfg = tiny.get_config()
  cfg.train.update(progress=False, **train)
  return cfg


def one_device_mesh():
  cfg = tiny_cfg()
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  return sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])


def test_sharded_step_equals_single_device_step(tmp_path):
  """data x fsdp x tensor = 2 x 2 x 2 over 8 fake CPU devices vs one device."""
  assert jax.device_count() == 8
  cfg = tiny_cfg()
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  results = {}
  for name, mesh in [("single", one_device_mesh()), ("sharded", sharding.make_mesh(cfg.mesh))]:
    trainer = loop.Trainer.build(cfg, str(tmp_path / name), mesh)
    state = state_lib.init_state(trainer.model, trainer.tx, trainer.cfg, mesh,
                                 trainer.state_shardings)
    losses = []
    for step in range(3):
      batch = sharding.global_batch(trainer.data.train.batch(step), mesh)
      with jax.set_mesh(mesh):
        state, metrics = trainer.train_step(state, batch)
      losses.append(float(metrics["loss"]))
    results[name] = (losses, jax.device_get(state.params))
  if_sharded = jax.tree.leaves(results["sharded"][1])
  np.testing.assert_allclose(results["sharded"][0], results["single"][0], rtol=1e-5, atol=1e-6)
  for a, b in zip(if_sharded, jax.tree.leaves(results["single"][1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_params_are_actually_sharded(tmp_path):
  cfg = tiny_cfg()
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  trainer = loop.Trainer.build(cfg, str(tmp_path), sharding.make_mesh(cfg.mesh))
  spec = trainer.state_shardings.params["layers"]["mlp"]["up"]["kernel"].spec
  assert tuple(spec) == (None, "fsdp", "tensor")  # (layers, embed, mlp)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [(row["step"], row["loss"]) for row in map(json.loads, f)]


def test_killed_and_resumed_run_logs_identical_losses(tmp_path):
  cfg = tiny_cfg(steps=8, log_every=1, checkpoint_every=3, eval_batches=1)
  # Crash after step 5; the last checkpoint is at 3.
  dirs = train_straight_and_resumed(cfg, tmp_path, one_device_mesh(), crash_after=5)
  straight, resumed = map(_losses, dirs)
  assert [s for s, _ in resumed] == list(range(1, 9))
  assert resumed == straight  # bit for bit: floats compared exactly


def test_nan_is_detected_and_names_the_step_as_metrics_number_it(tmp_path, monkeypatch):
  """The 5th update (batch index 4) is poisoned: the error says "step 5", the step that
  metrics.jsonl would have logged next after its rows 1..4 (the old message said step 4).
  The TensorBoard writer is closed before the error propagates (its shutdown used to print
  a RuntimeError after the NaN message)."""
  cfg = tiny_cfg(steps=6, log_every=1)
  mesh = one_device_mesh()
  probe = loop.Trainer.build(cfg, str(tmp_path / "probe"), mesh)
  target = int(probe.data.train.batch(4)["tokens"].sum())
  real_loss = step_lib.diffusion.training_loss

  def poisoned(logits_fn, x0, rng, dcfg, **kw):
    loss, metrics = real_loss(logits_fn, x0, rng, dcfg, **kw)
    return loss * jax.numpy.where(x0.sum() == target, jax.numpy.nan, 1.0), metrics

  monkeypatch.setattr(step_lib.diffusion, "training_loss", poisoned)
  closed = []
  real_close = loop.MetricsWriter.close
  monkeypatch.setattr(loop.MetricsWriter, "close",
                      lambda self: (real_close(self), closed.append(self.tb is not None)))
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 5\b"):
    loop.train(cfg, str(tmp_path / "run"), mesh=mesh)
  assert [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3, 4]
  assert closed == [True]  # tensorboardX is installed: its writer was open, and was closed


def test_cli_nan_stop_ends_with_the_error_in_metrics_numbering(tmp_path):
  """A real `bdiff train` that diverges (lr 1e30): exit 1, and the last line on stderr is the
  error, naming the step after the last metrics.jsonl row (the old message said one less)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "bdiff.cli", "train", "--config", "configs/tiny.py",
       f"--workdir={workdir}", "--config.optim.lr=1e30", "--config.train.steps=6",
       "--config.train.log_every=1", "--config.train.eval_batches=1"],
      cwd=root, env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"bdiff: error: non-finite loss or gradient at step (\d+) .*; stopping",
                       last)
  assert match, proc.stderr[-3000:]
  logged = [s for s, _ in _losses(workdir)]
  assert logged == list(range(1, int(match.group(1))))


@pytest.mark.parametrize("key,value,match", [
    ("diffusion.block_size", 5, "block_size"),
    ("model.n_kv_heads", 3, "n_kv_heads"),
    ("train.global_batch", 0, "train.global_batch must be positive"),
    ("train.seq_len", 0, "train.seq_len must be positive"),
    ("optim.ema_decay", 1.5, "ema_decay"),
    ("sample.threshold", 0.0, "sample.threshold"),
])
def test_invalid_config_fails_naming_the_key(tmp_path, key, value, match):
  cfg = tiny_cfg()
  section, field = key.split(".")
  cfg[section][field] = value
  with pytest.raises(ValueError, match=match):
    loop.Trainer.build(cfg, str(tmp_path), one_device_mesh())


def test_invalid_config_creates_no_run_directory(tmp_path):
  """The old loop made the run directory before it built (and validated) anything."""
  cfg = tiny_cfg()
  cfg.model.vocab_size = 300  # found when the data tokenizer is built
  with pytest.raises(ValueError, match="model.vocab_size"):
    loop.train(cfg, str(tmp_path / "run"), mesh=one_device_mesh())
  cfg = tiny_cfg(seq_len=0)
  with pytest.raises(ValueError, match="train.seq_len"):
    loop.train(cfg, str(tmp_path / "run"), mesh=one_device_mesh())
  assert not (tmp_path / "run").exists()


def test_bad_variant_value_names_the_variant_key():
  with pytest.raises(ValueError, match=r"configs/tiny.py: variant block_size must be an "
                     r"integer, got 'abc'"):
    tiny.get_config("block_size=abc")
  with pytest.raises(ValueError,
                     match=r"variant size must be one of \('base', 'demo', 'learned'\)"):
    tasks_config.get_config("size=huge")


def test_unknown_key_is_rejected():
  cfg = tiny_cfg()
  with pytest.raises(AttributeError):
    cfg.model.d_modle = 3  # base config is locked: typos fail at once


def test_config_roundtrip():
  cfg = tiny_cfg()
  again = config_lib.from_dict(config_lib.to_dict(cfg))
  assert config_lib.to_dict(again) == config_lib.to_dict(cfg)


def test_step_time_excludes_compilation_and_mfu_uses_the_mesh(tmp_path, monkeypatch):
  """A fake clock: the first (compiling) step takes 100 s, every later step 1 s.

  The old loop timed the first window from before the first step (step_time 50.5 s) and
  divided MFU by all 8 host devices although the mesh holds one.
  """
  now = [0.0]
  monkeypatch.setattr(loop, "_clock", lambda: now[0])
  monkeypatch.setattr(loop.flops, "peak_flops", lambda device=None: 1e12)
  real_jit = step_lib.jit_train_step

  def timed_jit(*args, **kwargs):
    fn, calls = real_jit(*args, **kwargs), [0]

    def step(state, batch):
      out = fn(state, batch)
      now[0] += 100.0 if calls[0] == 0 else 1.0
      calls[0] += 1
      return out
    return step

  monkeypatch.setattr(loop.step_lib, "jit_train_step", timed_jit)
  cfg = tiny_cfg(steps=4, log_every=2, eval_batches=1)
  loop.train(cfg, str(tmp_path / "run"), mesh=one_device_mesh())
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl",
                                            encoding="utf-8")]
  assert [r["step_time_s"] for r in rows] == [1.0, 1.0]
  for r in rows:  # peak 1e12 on a one-device mesh: MFU = TFLOP/s exactly
    assert r["mfu"] == pytest.approx(r["tflops"], rel=1e-12)


def test_vocab_mismatch_names_model_vocab_size(tmp_path):
  cfg = tiny_cfg()
  cfg.model.vocab_size = 300  # the tiny config's byte tokenizer has 259 ids
  with pytest.raises(ValueError, match=r"model\.vocab_size=300.*'bytes'.*259"):
    loop.Trainer.build(cfg, str(tmp_path), one_device_mesh())


def test_task_eval_reports_answer_nelbo_without_padding(tmp_path):
  """eval_answer_nll is scored over each answer and its one EOS; the padding is excluded."""
  cfg = tasks_config.get_config()
  cfg.data.num_task_examples = 200
  cfg.train.update(progress=False, global_batch=8, eval_batches=1)
  mesh = one_device_mesh()
  trainer = loop.Trainer.build(cfg, str(tmp_path), mesh)
  state = state_lib.init_state(trainer.model, trainer.tx, trainer.cfg, mesh,
                               trainer.state_shardings)
  summary = trainer.evaluate(state.params)
  tok = trainer.data.tokenizer
  sep = tok.encode("=")[0]
  expect = 0
  for row in next(trainer.data.valid.eval_batches(1))["tokens"].tolist():
    start = row.index(sep)
    expect += row.index(tok.eos_id, start) - start  # answer tokens + the EOS that ends it
  assert summary["answer_tokens"] == expect
  assert summary["answer_tokens"] < summary["tokens"]  # padding is evaluated but not reported
  assert np.isfinite(summary["answer_nll"]) and summary["answer_nll"] > 0
