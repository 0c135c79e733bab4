"""Multi-host training through JAX's own runtime: 2 processes x 4 CPU devices on localhost
train exactly like 1 process x 8 devices (same mesh, same global batches, same losses).

Each process is a real ``bdiff train`` started with ``--coordinator_address``,
``--num_processes`` and ``--process_id``; process 0 alone writes the run's shared files.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from bdiff import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.train.steps=4", "--config.train.log_every=2", "--config.train.eval_batches=1",
             "--config.train.progress=False", "--config.train.checkpoint_every=2",
             "--config.data.max_docs=10"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train(workdir, devices: int, flags=()) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  cmd = [sys.executable, "-m", "bdiff.cli", "train", "--config", "configs/tiny.py",
         f"--workdir={workdir}", *OVERRIDES, *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(procs) -> None:
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_two_processes_match_one(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  _finish([_train(single, 8)])
  port = _free_port()
  _finish([_train(multi, 4, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"]) for i in range(2)])
  one, two = _metrics(single), _metrics(multi)
  assert [r["step"] for r in two] == [r["step"] for r in one] == [2, 4]  # written once
  for a, b in zip(one, two):
    for key in ("loss", "masked_ce", "grad_norm", "param_norm"):
      # The same program on the same 8-device mesh; only the all-reduce transport differs
      # (in-process vs gloo), which may reorder float32 sums.
      assert b[key] == pytest.approx(a[key], rel=1e-5), key
  info = json.loads((multi / "run.json").read_text())
  assert info["process_count"] == 2 and len(info["devices"]) == 8


def test_partial_flags_name_what_is_missing():
  with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
    distributed.DistributedArgs(coordinator_address="localhost:1").explicit()
  with pytest.raises(ValueError, match="--process_id must be in"):
    distributed.DistributedArgs("localhost:1", 2, 2).explicit()
  with pytest.raises(ValueError, match="HOST:PORT"):
    distributed.DistributedArgs("localhost", 2, 0).explicit()


def test_cluster_detection():
  assert distributed.detect_cluster({}) is None
  assert distributed.detect_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None
  assert distributed.detect_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) == "SLURM"
  assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a"}) is None
  assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "TPU pod"
