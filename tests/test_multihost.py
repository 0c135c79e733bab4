"""Multi-host runs through JAX's own runtime: 2 processes x 4 CPU devices on localhost do
exactly what 1 process x 8 devices does, on the same FSDP mesh (the weights split over all 8
devices, so each process holds only its half):

* ``bdiff train``: same global batches, same losses; process 0 alone writes the run's files;
* ``bdiff sample`` and ``bdiff eval``: prompt rows split over both processes, the same output
  file and numbers, written by process 0 alone;
* ``bdiff export``: each tensor gathered to process 0 one at a time, the same safetensors
  bytes, written by process 0 alone.

Each process is a real ``bdiff`` command line with ``--coordinator_address``,
``--num_processes`` and ``--process_id``.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from bdiff import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN3 = os.path.join(ROOT, "tests", "fixtures", "hf", "qwen3")
OVERRIDES = ["--config.train.steps=4", "--config.train.log_every=2", "--config.train.eval_batches=1",
             "--config.train.progress=False", "--config.train.checkpoint_every=2",
             "--config.data.max_docs=10", "--config.mesh.data=1", "--config.mesh.fsdp=8"]
SAMPLE = ["--config.sample.batch_size=8", "--config.sample.max_new_tokens=8"]
# One interpreter runs several `bdiff` command lines (one start-up per process; the runtime is
# initialised by the first and reused by the others).
DRIVER = ("import json, sys\nfrom bdiff import cli\n"
          "sys.exit(max(cli.main(argv) for argv in json.loads(sys.argv[1])))")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _bdiff(commands, devices: int, flags=()) -> subprocess.Popen:
  """One process running each of ``commands`` (argument lists) with the multi-host ``flags``."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  argvs = [[str(a) for a in c] + list(flags) for c in commands]
  return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(argvs)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train(workdir):
  return ["train", "--config", "configs/tiny.py", f"--workdir={workdir}", *OVERRIDES]


def _two_processes(commands_of) -> None:
  """``commands_of(process_id)`` on 2 processes x 4 devices."""
  port = _free_port()
  _finish([_bdiff(commands_of(i), 4, [f"--coordinator_address=localhost:{port}",
                                       "--num_processes=2", f"--process_id={i}"])
           for i in range(2)])


def _finish(procs) -> None:
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]


def _jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module", name="single")
def _single(tmp_path_factory):
  """A run trained by 1 process x 8 devices."""
  workdir = tmp_path_factory.mktemp("single") / "run"
  _finish([_bdiff([_train(workdir)], 8)])
  return workdir


def test_two_processes_train_like_one(single, tmp_path):
  multi = tmp_path / "multi"
  _two_processes(lambda i: [_train(multi)])
  one, two = _jsonl(single / "metrics.jsonl"), _jsonl(multi / "metrics.jsonl")
  assert [r["step"] for r in two] == [r["step"] for r in one] == [2, 4]  # written once
  for a, b in zip(one, two):
    for key in ("loss", "masked_ce", "grad_norm", "param_norm"):
      # The same program on the same 8-device mesh; only the all-reduce transport differs
      # (in-process vs gloo), which may reorder float32 sums.
      assert b[key] == pytest.approx(a[key], rel=1e-5), key
  info = json.loads((multi / "run.json").read_text())
  assert info["process_count"] == 2 and len(info["devices"]) == 8


def _inference(run, out, prompts, converted):
  return [["sample", "--workdir", run, "--prompts", prompts, "--out", out / "samples.jsonl",
           *SAMPLE],
          ["eval", "--workdir", run, "--tasks", "copy", "--config.eval.num_examples=8",
           "--config.eval.batch_size=8", "--config.sample.max_new_tokens=8"],
          ["export", "--workdir", converted, "--out", out / "hf"]]


def _without_timing(rows: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in ("seconds", "tok/s")} for r in rows]


def test_two_processes_sample_eval_and_export_like_one(single, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                             ("def f(", "import os", "class A:", "x = [", "return")))
  runs_and_outs = {n: (tmp_path / n / "run", tmp_path / n / "out") for n in ("one", "two")}
  for run, out in runs_and_outs.values():
    os.makedirs(out)
    subprocess.run(["cp", "-r", str(single), str(run)], check=True)
  quiet = tmp_path / "process1"  # what process 1 is told to write: nothing must appear
  converted = tmp_path / "qwen3"  # export writes AR and converted models: the Qwen3 fixture
  convert = ["convert", "--from_hf", QWEN3, "--workdir", converted, *OVERRIDES[-2:]]
  _finish([_bdiff([convert] + _inference(*runs_and_outs["one"], prompts, converted), 8)])
  _two_processes(lambda i: _inference(runs_and_outs["two"][0],
                                      runs_and_outs["two"][1] if i == 0 else quiet, prompts,
                                      converted))
  assert not quiet.exists()
  (one_run, one), (two_run, two) = runs_and_outs["one"], runs_and_outs["two"]
  samples = _jsonl(one / "samples.jsonl")
  assert len(samples) == 5 and _without_timing(_jsonl(two / "samples.jsonl")) == \
      _without_timing(samples)
  evals = _jsonl(one_run / "eval_tasks.jsonl")
  assert len(evals) == 1 and _without_timing(_jsonl(two_run / "eval_tasks.jsonl")) == \
      _without_timing(evals)  # one row: process 1 appended nothing
  for name in ("model.safetensors", "config.json"):
    assert (two / "hf" / name).read_bytes() == (one / "hf" / name).read_bytes(), name


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
