"""experiments/cache_ladder.py: its smoke run end to end, and the runs it refuses.

Random weights of a tiny one-block model (``restore_params`` is replaced, as in
test_parallelbench): this checks the plumbing (every mode at both batch sizes, the measured
columns, the report), not speed or accuracy; the trained model's numbers are in
docs/cache_ladder.md.
"""
import pytest

import bdiff
from bdiff.config import base_config
from bdiff.data import ByteTokenizer
from bdiff.eval import speed_bench
from experiments import cache_ladder


def tiny_cfg(block=32):
  cfg = base_config()
  cfg.name = "tiny"
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32")
  cfg.train.seq_len = 32
  cfg.diffusion.block_size = block
  cfg.sample.update(max_new_tokens=8, commit="fused")  # as the task configs set it
  cfg.eval.update(tasks="copy,reverse")
  return cfg


def test_smoke_run_reports_every_mode(tmp_path, monkeypatch):
  params = speed_bench.random_params(tiny_cfg().model)
  monkeypatch.setattr(bdiff, "restore_params",
                      lambda path: (tiny_cfg(), params, ByteTokenizer()))
  out = tmp_path / "ladder.md"
  modes = ("none", "dkv")  # one approximate rung keeps the compiles few
  rows = cache_ladder.main(["--workdir", "a", "--out", str(out), "--smoke", "--block", "4",
                            "--modes", ",".join(modes), "--tasks", "sort"])
  assert [(r["cache"], r["batch"]) for r in rows] == [(m, b) for b in (1, 2) for m in modes]
  by = {(r["cache"], r["batch"]): r for r in rows}
  assert by["none", 1]["drift"] == 0.0 and by["none", 1]["× none"] == 1.0
  for m in modes[1:]:
    # Every approximate mode recomputes fewer positions per row than the full recompute.
    assert by[m, 1]["positions/row"] < by["none", 1]["positions/row"]
    assert 0.0 <= by[m, 2]["drift"] <= 1.0 and by[m, 2]["tok/s"] > 0
  text = out.read_text()
  assert "Command: `python -m experiments.cache_ladder --workdir a" in text
  assert "| dkv | 2 |" in text and "mean ± s.d. over 2 rounds" in text
  assert "prompts of sort " in text  # --tasks replaces the run's eval.tasks (copy,reverse)


def test_refuses_bad_modes():
  with pytest.raises(ValueError, match="--modes must start with 'none'"):
    cache_ladder.main(["--workdir", "a", "--out", "x.md", "--modes", "dkv,none"])


def test_refuses_a_block_causal_run():
  with pytest.raises(ValueError, match="not a one-block"):
    cache_ladder.ladder_config(tiny_cfg(block=4), "dkv", 4, 0.9)
