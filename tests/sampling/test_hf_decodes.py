"""bdiff's full-attention loop reproduces the reference decoders of LLaDA and Dream.

The fixtures (tests/fixtures/hf/{llada,dream}/decode.npz, written by
scripts/make_hf_fixtures.py) hold tiny random checkpoints and what the reference code decoded
from them: ML-GSAI/LLaDA ``generate.py`` (semi-AR blocks, low_confidence remasking, greedy)
and HKUNLP/Dream ``diffusion_generate`` (one block, entropy / maskgit_plus, greedy, token
shift). Each is decoded here by ``bdiff.sampling`` from the converted checkpoint with the
matching strategy (LLaDA: ``static``; Dream: ``dream``), both prompts of a fixture in one
ragged batch, and must agree token for token.
"""
import os

import jax
import numpy as np
import pytest

from bdiff import convert, runs
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")


def decode_golden(family: str) -> dict:
  with np.load(os.path.join(FIXTURES, family, "decode.npz")) as g:
    return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
  out = {}

  def get(family: str):
    if family not in out:
      workdir = str(tmp_path_factory.mktemp(family))
      convert.convert_from_hf(os.path.join(FIXTURES, family), workdir, progress=False)
      out[family] = runs.restore_params(workdir)[:2]
    return out[family]

  return get


def decode(restored, family: str, g: dict, **sample) -> np.ndarray:
  """Both fixture prompts (right-padded, ragged) decoded in one batch; ``[2, gen_length]``."""
  cfg, params = restored(family)
  cfg.sample.update(max_new_tokens=int(g["gen_length"]), temperature=0.0, stop_at_eos=False,
                    **sample)
  validate_run_sample_config(cfg)
  config = gen.SamplerConfig.from_config(cfg)
  assert config.full_attention and config.cache_mode == "none"
  prompts = g["prompts"]
  lengths = (prompts >= 0).sum(1).astype(np.int32)
  out = gen.generate(params, np.maximum(prompts, 0), jax.random.key(0), config, lengths)
  return np.asarray(out["tokens"])


@pytest.mark.parametrize("block", [8, 16])
def test_llada_semi_ar_generate_token_for_token(restored, block):
  """LLaDA generate.py: steps / (gen_length / block) steps per block, top-k low confidence."""
  g = decode_golden("llada")
  assert (str(g["remasking"]), float(g["temperature"]), float(g["cfg_scale"])) == (
      "low_confidence", 0.0, 0.0)
  assert min(g["selection_gap"], g["argmax_gap"]) > 1e-3  # no reference decision is a tie
  runs_ = np.flatnonzero(g["run_block_length"] == block)
  steps = int(g["steps"]) * block // int(g["gen_length"])
  got = decode(restored, "llada", g, strategy="static", confidence="prob", block_size=block,
               steps=steps)
  for run in runs_:
    np.testing.assert_array_equal(got[g["run_prompt"][run]], g["generated"][run],
                                  err_msg=f"run {run}")


@pytest.mark.parametrize("alg, confidence", [("entropy", "neg_entropy"),
                                             ("maskgit_plus", "prob")])
def test_dream_diffusion_generate_token_for_token(restored, alg, confidence):
  """Dream diffusion_generate: one block, its time grid, token shift, idle first step."""
  g = decode_golden("dream")
  assert min(g["selection_gap"], g["argmax_gap"]) > 1e-3
  got = decode(restored, "dream", g, strategy="dream", confidence=confidence, block_size=0,
               steps=int(g["steps"]), allow_idle=True)
  for run in np.flatnonzero(g["run_alg"] == alg):
    np.testing.assert_array_equal(got[g["run_prompt"][run]], g["generated"][run],
                                  err_msg=f"run {run}")
