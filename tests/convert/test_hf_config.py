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


def test_ar_checkpoints_predict_block_initial_tokens_from_clean_context():
  """An AR head read with token shift predicts token i from clean tokens < i; its adaptation
  keeps that for every block's first token, while Fast-dLLM v2 keeps its own training rule."""
  ar = convert.hf_config(os.path.join(FIXTURES, "qwen3"))
  assert ar.diffusion.token_shift and ar.diffusion.shift_from_clean
  fast = convert.hf_config(os.path.join(FIXTURES, "fast_dllm_v2"))
  assert fast.diffusion.token_shift and not fast.diffusion.shift_from_clean
