"""experiments/exact_vs_cached.py: the equal-accuracy comparison and the runs it refuses.

No end-to-end smoke run here: it compiles eight samplers (two models x four configurations),
which takes longer than this suite's budget on one core; `--smoke` is run by hand and the trained
models' numbers are in docs/exact_vs_cached.md.
"""
import pytest

from bdiff.config import base_config
from bdiff.eval import stats
from experiments import exact_vs_cached


def row(correct, n=96):
  return {"correct": correct, "n": n}


def test_overlapping_accuracy_intervals_are_a_tie():
  fast, slow = stats.mean_sd([100.0, 102.0, 98.0]), stats.mean_sd([50.0, 51.0, 49.0])
  out = exact_vs_cached.compare(row(95), row(96), slow, fast)
  assert out == {"block ÷ this": "2.00", "accuracy vs block": "tie"}


def test_separated_accuracy_says_which_side():
  rate = stats.mean_sd([10.0, 11.0, 9.0])
  assert exact_vs_cached.compare(row(40), row(96), rate, rate)["accuracy vs block"] == "lower"
  assert exact_vs_cached.compare(row(96), row(40), rate, rate)["accuracy vs block"] == "higher"


def test_close_speeds_are_marked_a_speed_tie():
  a, b = stats.mean_sd([10.0, 14.0, 6.0]), stats.mean_sd([11.0, 15.0, 7.0])
  assert exact_vs_cached.compare(row(96), row(96), a, b)["block ÷ this"] == "1.10 (speed tie)"


def test_refuses_a_one_block_run_as_the_block_model():
  cfg = base_config()
  cfg.diffusion.block_size = cfg.train.seq_len
  with pytest.raises(ValueError, match="--block_run"):
    exact_vs_cached.block_config(cfg, 0.9)
