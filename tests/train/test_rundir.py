"""Run directories: one training at a time (a lock naming its holder), and a resumed run
refuses a changed config unless allowed, recording every accepted change."""
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import pytest

from bdiff import sharding
from bdiff.train import loop, rundir
from configs import tiny
from tests.cli_common import call, one_line_error
from resume_common import Crash  # tests/train/resume_common.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def tiny_cfg(**train):
  cfg = tiny.get_config()
  cfg.train.update(progress=False, eval_batches=1, **train)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  return cfg


def one_device_mesh():
  return sharding.make_mesh(tiny_cfg().mesh, devices=jax.devices()[:1])


@pytest.fixture(name="holder")
def _holder(tmp_path):
  """Another process holding the lock of tmp_path/run through rundir.locked."""
  workdir = tmp_path / "run"
  code = ("import sys; from bdiff.train import rundir\n"
          f"with rundir.locked({str(workdir)!r}):\n"
          "  print('held', flush=True); sys.stdin.read()\n")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "held"
  yield workdir, proc
  proc.communicate(timeout=60)  # closes stdin: the holder leaves its block and exits


def test_a_second_training_is_refused_naming_the_holder(holder):
  workdir, proc = holder
  expect = rf"in use by another training \(pid {proc.pid} on host {socket.gethostname()}"
  with pytest.raises(rundir.WorkdirLockedError, match=expect):
    loop.train(tiny_cfg(steps=2), str(workdir), mesh=one_device_mesh())
  assert sorted(os.listdir(workdir)) == [".lock"]  # nothing read, nothing written


def test_cli_train_in_a_locked_workdir_is_a_one_line_error(capsys, holder):
  workdir, proc = holder
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir", workdir,
                      "--config.train.progress=false")
  assert code == 1
  assert f"in use by another training (pid {proc.pid}" in one_line_error(err)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_multi_host_refusal_stops_every_process(holder):
  """Process 0 alone locks; when it is refused, process 1 must stop too (without agreeing it
  would wait forever in its first collective)."""
  workdir, proc = holder
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "bdiff.cli", "train", "--config", TINY, f"--workdir={workdir}",
       "--config.train.progress=false", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = []
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-3000:]
    errors.append(err.strip().splitlines()[-1])
  assert errors[0].startswith(f"bdiff: error: {workdir} is in use by another training "
                              f"(pid {proc.pid}")
  assert errors[1] == "bdiff: error: process 0 refused to start this run (its error says why)"


def test_cli_validation_failure_leaves_no_run_directory(capsys, tmp_path):
  """The vocabulary check needs the data tokenizer; the old loop had made the directory."""
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir", tmp_path / "run",
                      "--config.model.vocab_size=300")
  assert code == 1 and "model.vocab_size=300" in one_line_error(err)
  assert not (tmp_path / "run").exists()


def test_the_lock_is_held_for_the_whole_run_and_released_on_an_exception(tmp_path):
  workdir = str(tmp_path / "run")
  seen = []

  def crash(step):
    with pytest.raises(rundir.WorkdirLockedError, match=f"pid {os.getpid()} "):
      with rundir.locked(workdir):
        pass
    seen.append(step)
    raise Crash("simulated failure after step 1")

  with pytest.raises(Crash):
    loop.train(tiny_cfg(steps=2), workdir, mesh=one_device_mesh(), on_step=crash)
  assert seen == [1]
  with rundir.locked(workdir):  # released by the failed run
    pass
  with open(os.path.join(workdir, rundir.LOCK_FILE), encoding="utf-8") as f:
    assert f.read() == ""  # and no holder is named while nobody holds it


def test_only_process_0_locks(tmp_path, monkeypatch):
  monkeypatch.setattr(rundir.distributed, "is_main_process", lambda: False)
  with rundir.locked(str(tmp_path / "run")):
    assert not (tmp_path / "run").exists()


def test_config_changes_are_dotted_and_harmless_keys_are_listed():
  old = rundir.config_lib.to_dict(tiny_cfg())
  new_cfg = tiny_cfg(steps=99)
  new_cfg.optim.lr = 1e-3
  new_cfg.sample.threshold = 0.5
  changes = rundir.config_changes(old, rundir.config_lib.to_dict(new_cfg))
  assert changes == {"optim.lr": (3e-3, 1e-3), "sample.threshold": (0.9, 0.5),
                     "train.steps": (40, 99)}
  assert [k for k in changes if rundir.harmless(k)] == ["sample.threshold", "train.steps"]
  assert not rundir.harmless("train.seq_len") and not rundir.harmless("meshy")


@pytest.fixture(scope="module", name="trained")
def _trained(tmp_path_factory):
  """A run trained to its final checkpoint at step 2 (copied by each test that changes it)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  loop.train(tiny_cfg(steps=2), workdir, mesh=one_device_mesh())
  return workdir


def _history(workdir):
  path = os.path.join(workdir, rundir.HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _saved(workdir):
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return json.load(f)


def test_a_changed_config_is_refused_then_allowed_and_recorded(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  changed = tiny_cfg(steps=3)
  changed.diffusion.block_size = 8
  changed.optim.lr = 1e-3
  with pytest.raises(rundir.ConfigChangedError) as err:
    loop.train(changed, workdir, mesh=one_device_mesh())
  assert "at step 2" in str(err.value)
  assert "changed: diffusion.block_size: 4 -> 8, optim.lr: 0.003 -> 0.001." in str(err.value)
  assert "train.steps" not in str(err.value)  # harmless: not a reason to refuse
  assert _saved(workdir)["diffusion"]["block_size"] == 4 and _history(workdir) == []

  loop.train(changed, workdir, mesh=one_device_mesh(), allow_config_change=True)
  assert _saved(workdir)["diffusion"]["block_size"] == 8
  (row,) = _history(workdir)
  assert row["step"] == 2 and row["event"] == "config_change"
  assert row["changes"] == {"diffusion.block_size": [4, 8], "optim.lr": [0.003, 0.001],
                            "train.steps": [2, 3]}
  assert row["needed_flag"] == ["diffusion.block_size", "optim.lr"]


def test_harmless_changes_need_no_flag_but_are_recorded(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  out = loop.train(tiny_cfg(steps=3, log_every=1), workdir, mesh=one_device_mesh())
  assert "loss" in out
  (row,) = _history(workdir)
  assert row["step"] == 2 and row["needed_flag"] == []
  assert row["changes"] == {"train.log_every": [10, 1], "train.steps": [2, 3]}


def test_cli_refuses_a_changed_config_naming_the_keys_and_the_flag(capsys, trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  code, _, err = call(capsys, "train", "--config", TINY, "--workdir", workdir,
                      "--config.train.steps=2", "--config.train.eval_batches=1",
                      "--config.train.progress=false", "--config.data.max_docs=20")
  assert code == 1
  line = one_line_error(err)
  assert "changed: data.max_docs: 40 -> 20." in line and "--allow_config_change" in line
  code, out, _ = call(capsys, "train", "--help")
  assert code == 0 and "--allow_config_change" in out
