"""`make demo` (experiments/demo.py): re-runnable, reproducible, safe with its workdir.

The full demo trains for minutes; these runs use a few steps and two strategies, which is
enough to exercise the second run in the same workdir (it used to crash with KeyError 'loss')
and to compare the two tables.
"""
import json

import pytest

from configs import tasks as tasks_config
from experiments import demo

KEYS = ("strategy", "n", "correct", "tokens", "forwards", "ci95")


def test_second_run_starts_fresh_and_prints_the_same_table(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(demo, "STRATEGIES", (demo.STRATEGIES[0], demo.STRATEGIES[-1]))
  args = ["--steps", "3", "--examples", "4", "--workdir", str(tmp_path / "demo"),
          "--out", str(tmp_path / "demo.md")]
  first = demo.main(args)
  out1 = capsys.readouterr().out
  second = demo.main(args)
  out2 = capsys.readouterr().out
  assert "starting fresh" in out1 and "removing it and starting fresh" in out2
  assert [{k: r[k] for k in KEYS} for r in first] == [{k: r[k] for k in KEYS} for r in second]
  table = lambda out: [line for line in out.splitlines() if line.startswith("| ")]  # noqa: E731
  assert table(out1) == table(out2) and len(table(out1)) == 3
  for phase in ("train (data, compile, steps)", "decode (2 strategies)", "total"):
    assert phase in out2
  report = (tmp_path / "demo.md").read_text()
  assert "Command: `python -m experiments.demo --steps 3" in report and "| ci95 |" in report


def test_refuses_to_delete_a_directory_that_holds_no_demo_run(tmp_path):
  (tmp_path / "notes.txt").write_text("keep me")
  with pytest.raises(ValueError, match="holds no demo run"):
    demo.fresh_workdir(str(tmp_path), "tasks_demo")
  (tmp_path / "config.json").write_text(json.dumps({"name": "tasks"}))
  with pytest.raises(ValueError, match="'tasks'"):
    demo.fresh_workdir(str(tmp_path), "tasks_demo")
  assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_tokens_per_step_become_denoising_steps_per_block():
  cfg = tasks_config.get_config("size=demo")
  block = cfg.diffusion.block_size
  assert demo.strategy_config(cfg, dict(strategy="static", steps=-2)).sample.steps == block // 2
  assert demo.strategy_config(cfg, dict(strategy="static", steps=1)).sample.steps == 1
  assert cfg.sample.steps == 0  # the base config is not modified
