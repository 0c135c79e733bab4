"""AdaBlock (arXiv 2509.26432, lgxi24/AdaBlock-dLLM) in the full-attention semi-AR loop.

Each block's length is chosen at its first step from the most confident delimiter proposal,
within ``[1, sample.block_size]``. A tiny sharpened random full-attention model (2 layers)
with ragged prompts; ids 3 and 10 serve as delimiters (10 is this model's most frequent
proposal, so lengths vary from 1 to the cap).
"""
import jax
import numpy as np
import pytest
from sampling_common import full_attention_params, random_prompts, tiny_config

from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config

V = 23
WIDTH, NEW, CAP, B0 = 7, 12, 6, 3
LENGTHS = np.array([7, 3, 5, 4], np.int32)
IDS = np.arange(40, 44, dtype=np.int32)
STOP = 4
ADABLOCK = dict(strategy="adablock", block_size=CAP, block_length=B0, delimiter_ids=(3, 10),
                delimiter_threshold=0.3)


def sampler(attention="bidirectional", **sample):
  cfg = tiny_config(V, 16, attention=attention)
  cfg.sample.update(max_new_tokens=NEW, strategy="threshold", threshold=0.7, temperature=1.0)
  cfg.sample.update(**sample)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg, eos_id=STOP)


@pytest.fixture(scope="module")
def params():
  return full_attention_params(V)


@pytest.fixture(scope="module")
def prompts():
  return random_prompts(V, WIDTH)


def run(params, prompts, config, rows=(0, 1, 2, 3), trace=False):
  rows = np.asarray(rows)
  out = gen.generate(params, prompts[rows], jax.random.key(3), config, LENGTHS[rows],
                     IDS[rows], trace=trace)
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def sampled(params, prompts):
  return run(params, prompts, sampler(**ADABLOCK), trace=True)


def blocks(lengths):
  """``[(start, end))`` generation offsets of the blocks a row of ``block_lengths`` made."""
  ends = np.cumsum(lengths[lengths > 0])
  return list(zip(np.concatenate([[0], ends[:-1]]), ends))


def test_lengths_reported_in_bounds_and_blocks_respected(sampled):
  """Lengths lie in [1, CAP], vary with the proposals, tile the generation; every position
  of a block is committed before any position of the next (commits stay in the block)."""
  lengths, trace = sampled["block_lengths"], sampled["trace"]
  assert sampled["done"].all()
  used = lengths[lengths > 0]
  assert used.min() >= 1 and used.max() <= CAP
  assert len(set(used.tolist()) - {B0}) >= 2  # the delimiters changed some lengths
  mask_id = gen.SamplerConfig.from_config(tiny_config(V, 16)).mask_id
  for r in range(4):
    n, spans = sampled["num_tokens"][r], blocks(lengths[r])
    assert spans[-1][1] == NEW or spans[-1][1] >= n > spans[-1][0]  # budget or stop
    gen_cols = trace[:, r, LENGTHS[r]:LENGTHS[r] + n]
    first = np.argmax(gen_cols != mask_id, axis=0)  # iteration that committed each position
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
      assert first[s0:e0].max() < first[s1:min(e1, n)].min(), f"row {r} block {s0}:{e0}"


def test_batch_invariant(params, prompts, sampled):
  """A row decodes the same (tokens, lengths, forwards) alone as in the ragged batch."""
  config = sampler(**ADABLOCK)
  for r in (1, 3):
    alone = run(params, prompts, config, rows=(r,))
    for key in ("tokens", "block_lengths", "nfe_denoise", "positions_computed"):
      np.testing.assert_array_equal(alone[key][0], sampled[key][r], err_msg=f"{key} row {r}")


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_never_confident_is_fixed_blocks(params, prompts, cache):
  """No delimiter proposal reaches the threshold: every block has the default length B0, and
  the run equals the plain semi-AR loop (threshold rule, blocks of B0) token for token.
  Greedy, so the proposals do not depend on the window width. With the dual cache the keys
  past the block's end come from the cache, as in the fixed loop."""
  never = dict(ADABLOCK, delimiter_threshold=1.0, temperature=0.0, cache=cache)
  ada = run(params, prompts, sampler(**never))
  fixed = run(params, prompts, sampler(block_size=B0, temperature=0.0, cache=cache))
  for r in range(4):
    spans = blocks(ada["block_lengths"][r])
    assert all(e - s == B0 for s, e in spans[:-1]) and spans[-1][1] - spans[-1][0] <= B0
  for key in ("tokens", "num_tokens", "nfe_denoise"):
    np.testing.assert_array_equal(ada[key], fixed[key], err_msg=key)
  assert "block_lengths" not in fixed


def test_config_checks():
  """Block-causal models refuse AdaBlock (trained block size); B0 must fit the cap."""
  with pytest.raises(ValueError, match="sample.strategy='adablock'.*full-attention"):
    sampler(attention="block_causal", **dict(ADABLOCK, block_size=0))
  with pytest.raises(ValueError, match="sample.block_length=8 .*sample.block_size"):
    sampler(**dict(ADABLOCK, block_length=8))
