"""Block-size curriculum (NBDiff): stage per step, validation, one compile per stage, resume."""
import json
import os

import jax
import pytest

from bdiff import config as config_lib
from bdiff import convert, runs, sharding
from bdiff.diffusion import curriculum as dcurriculum
from bdiff.train import curriculum, loop, step as step_lib
from configs import tiny
from resume_common import train_straight_and_resumed  # tests/train/resume_common.py

STAGES = [[0, 1], [3, 2], [5, 4]]


def tiny_cfg(stages=STAGES, **train):
  cfg = tiny.get_config()
  cfg.train.update(progress=False, **train)
  cfg.diffusion.block_size = 4
  cfg.diffusion.block_curriculum = stages
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  return cfg


def one_device_mesh():
  return sharding.make_mesh(tiny_cfg().mesh, devices=jax.devices()[:1])


def test_block_size_at_each_step():
  cfg = tiny_cfg()
  assert [curriculum.block_size_at(cfg, s) for s in range(8)] == [1, 1, 1, 2, 2, 4, 4, 4]
  cfg.diffusion.block_curriculum = []
  assert [curriculum.block_size_at(cfg, s) for s in range(3)] == [4, 4, 4]


@pytest.mark.parametrize("stages,match", [
    ([[0, 1], [3, 2]], r"diffusion.block_curriculum: the last stage's block size 2 must equal diffusion.block_size=4"),
    ([[1, 1], [3, 4]], "first stage must start at step 0"),
    ([[0, 1], [3, 2], [3, 4]], r"block_curriculum\[2\]: start steps must increase"),
    ([[0, 2], [3, 1], [5, 4]], r"block_curriculum\[1\]: block sizes must not shrink"),
    ([[0, 3], [5, 4]], r"block_curriculum\[0\]: block size 3 must be a positive int dividing"),
    ([[0, 1], [5]], r"block_curriculum\[1\] must be a pair of ints"),
])
def test_bad_curriculum_names_the_key(stages, match):
  cfg = tiny_cfg(stages)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(cfg)


def test_stage_config_drops_the_curriculum():
  stage = curriculum.stage_config(tiny_cfg(), 2)
  assert (stage.diffusion.block_size, list(stage.diffusion.block_curriculum)) == (2, [])
  dcurriculum.check_block_curriculum(stage.diffusion.block_curriculum, 2, 32)


def test_one_compiled_step_per_stage(tmp_path, monkeypatch):
  built = []
  real = step_lib.jit_train_step

  def counting(model, tx, cfg, mesh, shardings):
    built.append(cfg.diffusion.block_size)
    return real(model, tx, cfg, mesh, shardings)

  monkeypatch.setattr(loop.step_lib, "jit_train_step", counting)
  cfg = tiny_cfg(steps=7, log_every=1, eval_batches=1)
  loop.train(cfg, str(tmp_path / "run"), mesh=one_device_mesh())
  assert built == [1, 2, 4]  # each stage's step built once, in stage order
  with open(os.path.join(tmp_path, "run", "metrics.jsonl"), encoding="utf-8") as f:
    logged = [(row["step"], row["block_size"]) for row in map(json.loads, f)]
  # metrics row `done` reports the block size of step done - 1
  assert logged == [(d, curriculum.block_size_at(cfg, d - 1)) for d in range(1, 8)]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [(r["step"], r["block_size"], r["loss"]) for r in map(json.loads, f)]


def test_resume_across_a_stage_boundary_is_exact(tmp_path):
  """Checkpoint at step 2 (stage B=1), crash at 4 (stage B=2), resume: identical losses."""
  cfg = tiny_cfg(steps=7, log_every=1, checkpoint_every=2, eval_batches=1)
  dirs = train_straight_and_resumed(cfg, tmp_path, one_device_mesh(), crash_after=3)
  straight, resumed = map(_rows, dirs)
  assert [b for _, b, _ in straight] == [1, 1, 1, 2, 2, 4, 4]
  assert resumed == straight  # floats compared exactly


QWEN3 = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "qwen3")


def test_adapt_a_converted_chat_model_on_sft_data_with_a_curriculum(tmp_path):
  """The adaptation recipe end to end on the tiny Qwen3 fixture: convert (an AR model, block 1),
  fine-tune on chat SFT records while the block size grows 1 -> 2 -> 4, then sample in chat
  mode at the curriculum's final block size."""
  workdir = str(tmp_path / "run")
  convert.convert_from_hf(QWEN3, workdir, progress=False)
  records = tmp_path / "sft.jsonl"
  records.write_text("".join(
      json.dumps({"prompt": f"add {i} 1", "response": str(i + 1)}) + "\n" for i in range(40)))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    cfg = config_lib.from_dict(json.load(f))
  assert cfg.diffusion.block_size == 1
  cfg.data.update(source="sft", path=str(records), answer_only=True, valid_fraction=0.25)
  cfg.diffusion.update(block_size=4, block_curriculum=[[0, 1], [2, 2], [3, 4]])
  cfg.train.update(steps=4, seq_len=32, global_batch=8, log_every=1, eval_batches=1,
                   progress=False)
  cfg.sample.update(strategy="threshold", max_new_tokens=8, chat=True)
  loop.train(cfg, workdir)
  assert [b for _, b, _ in _rows(workdir)] == [1, 1, 2, 4]
  sampler = runs.Sampler.from_run(workdir)
  assert sampler.config.block_size == 4 and sampler.template is not None
  record = sampler.sample(["add 3 1"])[0]
  assert 1 <= record["num_tokens"] <= 8


def test_a_stage_compile_is_not_step_time(tmp_path, monkeypatch):
  """A fake clock: compiling a step takes 100 s, running one 1 s. The stages at steps 2 and 4
  compile mid-run; without ahead-of-time compilation outside the timed window, the windows
  holding them reported (100 + 1 + 1) / 2 = 51 s per step."""
  now = [0.0]
  monkeypatch.setattr(loop, "_clock", lambda: now[0])
  real = step_lib.jit_train_step

  class FakeJit:
    def __init__(self, fn):
      self.fn, self.compiled = fn, False

    def lower(self, *args):
      return self

    def compile(self):
      now[0] += 100.0
      self.compiled = True
      return self

    def __call__(self, state, batch):
      if not self.compiled:  # jit compiles on its first call
        self.compile()
      out = self.fn(state, batch)
      now[0] += 1.0
      return out

  monkeypatch.setattr(loop.step_lib, "jit_train_step", lambda *a: FakeJit(real(*a)))
  cfg = tiny_cfg([[0, 1], [2, 2], [4, 4]], steps=6, log_every=2, eval_batches=1)
  loop.train(cfg, str(tmp_path / "run"), mesh=one_device_mesh())
  with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [(r["block_size"], r["step_time_s"]) for r in rows] == [(1, 1.0), (2, 1.0), (4, 1.0)]
