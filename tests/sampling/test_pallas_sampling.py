"""Sampling through the Pallas kernel (TPU kernel, interpret mode) gives the XLA tokens.

The cached forward attends a block window against the whole cache under the static
``masks.cache_window`` mask with per-row cache validity as segment ids, so ``impl="pallas"``
runs the same sampler as ``impl="xla"``; the no-cache reference runs ``masks.block_causal``.
The tiny sharpened random model of ``sampling_common`` with fp32 compute: greedy decisions
then agree exactly, and the traces show the same schedule step by step.
"""
import jax
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config

from bdiff.sampling import generate as gen

V, WIDTH, NEW = 19, 5, 6
LENGTHS = np.array([5, 1], np.int32)  # a 1-token prompt: fused mode's first window is dummy


def _config(impl, block, cc=False, **sample):
  cfg = tiny_config(V, block, attention_impl=impl,
                    pallas_backend="tpu_interpret" if impl == "pallas" else "")
  cfg.diffusion.context_causal = cc
  cfg.sample.update(max_new_tokens=NEW, strategy="threshold", threshold=0.3, **sample)
  return gen.SamplerConfig.from_config(cfg)


@pytest.fixture(scope="module")
def params():
  return sharpened_params(_config("xla", 4).model)


@pytest.mark.parametrize("block,sample", [
    (4, dict()),                  # cached, separate commit passes
    (2, dict(commit="fused")),    # cached, query = [previous block ; current block]
    (4, dict(use_cache=False)),   # the no-cache reference (block-causal mask)
    (2, dict(commit="fused", cc=True, prefill_chunk=2)),  # context-causal: static windows
], ids=["cache_separate", "cache_fused", "no_cache", "context_causal_fused_chunked"])
def test_pallas_sampling_gives_the_xla_tokens(params, block, sample):
  prompts = np.asarray(jax.random.randint(jax.random.key(1), (2, WIDTH), 0, V), np.int32)
  rng = jax.random.key(2)
  runs = [jax.tree.map(np.asarray, gen.generate(params, prompts, rng,
                                                _config(impl, block, **sample), LENGTHS,
                                                trace=True))
          for impl in ("xla", "pallas")]
  xla, pallas = runs
  assert xla["done"].all() and (xla["num_tokens"] == NEW).all()
  np.testing.assert_array_equal(pallas["tokens"], xla["tokens"])
  np.testing.assert_array_equal(pallas["trace"], xla["trace"])
  np.testing.assert_array_equal(pallas["nfe_denoise"], xla["nfe_denoise"])
