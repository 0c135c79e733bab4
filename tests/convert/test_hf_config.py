"""The converted config describes the checkpoint's own limits."""
import os

from bdiff import convert
from bdiff.sampling import config as sample_config

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")


def test_prompt_limit_is_the_checkpoints_context_not_the_training_window():
  cfg = convert.hf_config(os.path.join(FIXTURES, "qwen3"))
  # config.json: max_position_embeddings=256; bdiff's default training window is 128.
  assert cfg.train.seq_len == 128
  assert sample_config.prompt_limit(cfg) == 256
