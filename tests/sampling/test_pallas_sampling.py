"""Sampling through the Pallas kernel (TPU kernel, interpret mode) gives the XLA tokens.

The cached forward attends a block window against the whole cache under the static
``masks.cache_window`` mask with per-row cache validity as segment ids, so ``impl="pallas"``
runs the same sampler as ``impl="xla"``; the no-cache reference runs ``masks.block_causal``.
A random-init tiny model with sharpened weights (as in test_generate.py) and fp32 compute:
greedy decisions then agree exactly, and the traces show the same schedule step by step.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import masks
from bdiff.config import base_config
from bdiff.models import make_model
from bdiff.sampling import generate as gen

V, WIDTH, NEW = 19, 5, 6
LENGTHS = np.array([5, 1], np.int32)  # a 1-token prompt: fused mode's first window is dummy


def _config(impl, block, **sample):
  cfg = base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32", vocab_size=V, attention_impl=impl,
                   pallas_backend="tpu_interpret" if impl == "pallas" else "")
  cfg.diffusion.block_size = block
  cfg.sample.update(max_new_tokens=NEW, strategy="threshold", threshold=0.3, **sample)
  return gen.SamplerConfig.from_config(cfg)


@pytest.fixture(scope="module")
def params():
  model = make_model(_config("xla", 4).model)
  z = jnp.zeros((1, 8), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init, static_argnums=3)(
      jax.random.key(0), z, z, masks.causal(8)))["params"]
  sharpen = {"embed", "q", "k", "v", "o", "down"}  # context-dependent, spread confidences
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x * 3.0 if sharpen & {getattr(k, "key", None) for k in path} else x,
      params)


@pytest.mark.parametrize("block,sample", [
    (4, dict()),                  # cached, separate commit passes
    (2, dict(commit="fused")),    # cached, query = [previous block ; current block]
    (4, dict(use_cache=False)),   # the no-cache reference (block-causal mask)
], ids=["cache_separate", "cache_fused", "no_cache"])
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
