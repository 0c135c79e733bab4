"""The layer-wise hook (``transformer.embed_tokens`` / ``run_layer`` / ``output_logits``):
composed over every layer it is the model's own forward, scanned or unrolled, tied or not,
under a mask and against a prefix cache; ``run_layer`` also hands out the post-RoPE queries."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import masks
from bdiff.config import base_config
from bdiff.models import make_model, transformer


def _model_cfg(**kw):
  cfg = base_config().model
  cfg.update(vocab_size=23, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
             mlp_dim=64, dtype="float32", **kw)
  return cfg


@pytest.mark.parametrize("kw", [dict(), dict(scan_layers=False, tie_embeddings=False)])
def test_layers_composed_equal_the_forward(kw):
  cfg = _model_cfg(**kw)
  model = make_model(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 24)
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  params = model.init(jax.random.key(1), tokens, pos, masks.causal(8))["params"]
  params = jax.tree.map(lambda a: getattr(a, "value", a), params,
                        is_leaf=lambda a: hasattr(a, "value"))
  ref, kv = model.apply({"params": params}, tokens, pos, masks.causal(8), return_kv=True)
  stack = transformer.stacked_layer_params(cfg, params)
  layer = lambda i: jax.tree.map(lambda a: a[i], stack)  # noqa: E731
  x = transformer.embed_tokens(cfg, params, tokens)
  for i in range(cfg.n_layers):
    x, layer_kv, q = transformer.run_layer(cfg, layer(i), x, pos, masks.causal(8))
    np.testing.assert_allclose(layer_kv[0], kv[0][i], rtol=1e-5, atol=1e-5)
    assert q.shape == (2, 8, cfg.n_heads, cfg.head_dim)
  np.testing.assert_allclose(transformer.output_logits(cfg, params, x), ref, rtol=1e-5,
                             atol=1e-5)
  # Against a prefix cache: the last 3 positions queried over the first 5's cached K/V.
  tail = model.apply({"params": params}, tokens[:, 5:], pos[:, 5:],
                     masks.full(3, 8), cache=tuple(c[:, :, :5] for c in kv))
  x = transformer.embed_tokens(cfg, params, tokens[:, 5:])
  for i in range(cfg.n_layers):
    x, _, _ = transformer.run_layer(cfg, layer(i), x, pos[:, 5:], masks.full(3, 8),
                                    cache=(kv[0][i][:, :5], kv[1][i][:, :5]))
  np.testing.assert_allclose(transformer.output_logits(cfg, params, x), tail, rtol=1e-5,
                             atol=1e-5)
