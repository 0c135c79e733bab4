"""experiments/flashblock.py: the configurations it compares and its prompt padding.

No end-to-end run here (it needs a trained block-causal run); `--smoke` is run by hand and the
trained model's numbers are in docs/flashblock.md.
"""
import numpy as np
import pytest

from bdiff.config import base_config
from bdiff.sampling.config import validate_run_sample_config
from experiments import flashblock


@pytest.mark.parametrize("mode", flashblock.MODES)
def test_both_modes_run_the_same_separate_commit_loop(mode):
  cfg = base_config()
  cfg.sample.commit = "fused"  # what a run may have been trained/sampled with
  out = flashblock.mode_config(cfg, mode, 0.9)
  validate_run_sample_config(out)
  assert (out.sample.cache, out.sample.commit, out.sample.strategy) == (
      mode, "separate", "threshold")
  assert cfg.sample.commit == "fused"  # the run's own config is left alone


def test_padding_puts_eos_before_every_prompt():
  prompts = np.array([[5, 6, 0], [7, 0, 0]], np.int32)
  x, n = flashblock.padded(prompts, np.array([2, 1], np.int32), 2, eos=9)
  np.testing.assert_array_equal(x, [[9, 9, 5, 6, 0], [9, 9, 7, 0, 0]])
  np.testing.assert_array_equal(n, [4, 3])
  same, m = flashblock.padded(prompts, np.array([2, 1], np.int32), 0, eos=9)
  assert same is prompts and list(m) == [2, 1]
