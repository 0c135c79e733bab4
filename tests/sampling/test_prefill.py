"""Chunked prompt prefill: the same cache and tokens as one dense pass, memory linear in P."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config

from bdiff.models import make_model
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import generate as gen

V, B = 23, 4
LENGTHS = np.array([13, 4, 9, 2], np.int32)  # 3, 1, 2 and 0 whole prompt blocks
TOL = dict(rtol=1e-5, atol=1e-5)  # fp32 (K/V of size ~5: a few ulps of reduction order)


@pytest.fixture(scope="module")
def params():
  return sharpened_params(tiny_config(V, B).model)


@pytest.fixture(scope="module")
def prompts():
  return np.asarray(jax.random.randint(jax.random.key(4), (4, 13), 0, V), np.int32)


def _prefill(params, prompts, chunk, cc):
  model = make_model(tiny_config(V, B).model)
  apply = lambda *a, **kw: model.apply({"params": params}, *a, **kw)  # noqa: E731
  clean = LENGTHS // B * B
  width = prompts.shape[1] // B * B
  cache = cache_lib.init_cache(model.config, prompts.shape[0], 20)
  fn = jax.jit(lambda x: cache_lib.prefill(apply, x, cache, jnp.asarray(clean), B, chunk=chunk,
                                           vocab_size=V, context_causal=cc))
  return jax.tree.map(np.asarray, fn(jnp.asarray(prompts[:, :width])))


@pytest.mark.parametrize("cc", [False, True], ids=["block_causal", "context_causal"])
def test_chunked_prefill_equals_one_shot(params, prompts, cc):
  (k1, v1), last1 = _prefill(params, prompts, chunk=12, cc=cc)  # one forward
  for chunk in (4, 8):  # 3 chunks; 2 chunks, the last one past the prompt
    (k, v), last = _prefill(params, prompts, chunk=chunk, cc=cc)
    np.testing.assert_allclose(k, k1, **TOL)
    np.testing.assert_allclose(v, v1, **TOL)
    np.testing.assert_allclose(last, last1, **TOL)
  clean = LENGTHS // B * B
  for r, n in enumerate(clean):  # only whole prompt blocks are stored
    assert np.abs(k1[:, r, :n]).min(initial=1.0) > 0 and not k1[:, r, n:].any()
  assert not last1[3].any()  # no whole block: no prediction after the clean prompt


@pytest.mark.parametrize("commit", ["separate", "fused"])
def test_chunked_prefill_gives_the_same_tokens(params, prompts, commit):
  cfg = tiny_config(V, B)
  cfg.diffusion.token_shift = True  # the first generated logit comes from the prefill
  cfg.sample.update(max_new_tokens=6, strategy="threshold", threshold=0.3, commit=commit)
  one_shot = gen.SamplerConfig.from_config(cfg)
  chunked = dataclasses.replace(one_shot, prefill_chunk=B)
  rng = jax.random.key(1)
  a, b = (jax.tree.map(np.asarray, gen.generate(params, prompts, rng, c, LENGTHS, trace=True))
          for c in (one_shot, chunked))
  assert one_shot.prefill_chunk >= prompts.shape[1]
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  np.testing.assert_array_equal(a["trace"], b["trace"])
  # Prefill forwards are counted per chunk: 12 clean positions (3 blocks), 4 per forward.
  assert int(a["nfe_prefill"]) == 1 and int(b["nfe_prefill"]) == 3


def test_prefill_memory_grows_linearly_with_the_prompt():
  """Compiled scratch memory of the sampler at the default chunk: x4 prompt, ~x4 memory.

  A dense one-pass prefill holds ``P x P`` scores per head: x16 (measured 37 MB -> 575 MB).
  """
  cfg = tiny_config(V, B)
  cfg.sample.update(max_new_tokens=4)
  config = gen.SamplerConfig.from_config(cfg)
  model = make_model(cfg.model)
  z = jnp.zeros((1, 8), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), z, z))["params"]
  fn = jax.jit(gen.generate_fn, static_argnames="config")

  def scratch(width):
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    lowered = fn.lower(params, ints(1, width), jax.random.key(0), ints(1), ints(1),
                       config=config)
    return lowered.compile().memory_analysis().temp_size_in_bytes

  small, large = scratch(1024), scratch(4096)
  assert large / small < 6, (small, large)
