"""Shared setup of the sampler tests: a tiny random model whose outputs depend on context.

A random-init tiny model is enough for the sampler's exactness properties: they concern the
loop, not the weights. Its embeddings, attention and MLP outputs are scaled up 3x so that
outputs depend on the context (at init the residual stream is dominated by the token's own
embedding and every [MASK] decodes alike) and confidences are spread: a threshold of 0.3 then
commits several tokens in some steps and one in others.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bdiff import masks
from bdiff.config import base_config
from bdiff.models import make_model
from bdiff.sampling import generate as gen

_SHARPEN = {"embed", "q", "k", "v", "o", "down"}


def tiny_config(vocab: int, block: int, **model):
  """A full config with the tiny fp32 model (2 layers, d=32, GQA 2:1) and ``block``."""
  cfg = base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32", vocab_size=vocab)
  cfg.model.update(**model)
  cfg.diffusion.block_size = block
  return cfg


def sharpened_params(model_cfg, seed: int = 0):
  """Random params of ``model_cfg`` with the context-carrying weights scaled 3x (unboxed)."""
  model = make_model(model_cfg)
  z = jnp.zeros((1, 8), jnp.int32)
  init = jax.jit(model.init, static_argnums=3)
  params = nn.meta.unbox(init(jax.random.key(seed), z, z, masks.causal(8)))["params"]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x * 3.0 if _SHARPEN & {getattr(k, "key", None) for k in path} else x,
      params)


def full_attention_params(vocab: int):
  """Sharpened params of the tiny model under full (bidirectional) attention."""
  return sharpened_params(tiny_config(vocab, 16, attention="bidirectional").model)


def random_prompts(vocab: int, width: int, rows: int = 4):
  """``[rows, width]`` int32 random prompt tokens (fixed key)."""
  return np.asarray(jax.random.randint(jax.random.key(1), (rows, width), 0, vocab), np.int32)


def generate_rows(params, prompts, config, lengths, ids, rows=(0, 1, 2, 3)):
  """Decode the chosen rows of a prompt batch (fixed key, per-row ids): numpy outputs."""
  rows = np.asarray(rows)
  out = gen.generate(params, prompts[rows], jax.random.key(3), config, lengths[rows],
                     ids[rows])
  return jax.tree.map(np.asarray, out)
