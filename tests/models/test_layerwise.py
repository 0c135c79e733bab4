"""The layer-wise hook (``transformer.embed_tokens`` / ``run_layer`` / ``output_logits``):
composed over every layer it is the model's own forward, under a mask and against a prefix
cache; ``run_layer`` also hands out the post-RoPE queries. Checked on an unrolled model with an
untied head (the scanned, tied default is what the Elastic-Cache sampler runs, whose one-layer
test equals the no-cache forward)."""
import jax
import jax.numpy as jnp
import numpy as np

from bdiff import masks
from bdiff.config import base_config
from bdiff.models import make_model, transformer


def _model_cfg(**kw):
  cfg = base_config().model
  cfg.update(vocab_size=23, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
             mlp_dim=64, dtype="float32", **kw)
  return cfg


def _layer_by_layer(cfg, params, tokens, pos, mask, cache=None):
  """Logits, K/V and queries of the forward run one layer at a time."""
  stack = transformer.stacked_layer_params(cfg, params)
  x, kvs, qs = transformer.embed_tokens(cfg, params, tokens), [], []
  for i in range(cfg.n_layers):
    layer_cache = None if cache is None else (cache[0][i], cache[1][i])
    x, kv, q = transformer.run_layer(cfg, jax.tree.map(lambda a, i=i: a[i], stack), x, pos,
                                     mask, cache=layer_cache)
    kvs.append(kv)
    qs.append(q)
  return transformer.output_logits(cfg, params, x), kvs, qs


def test_layers_composed_equal_the_forward():
  cfg = _model_cfg(scan_layers=False, tie_embeddings=False)
  model = make_model(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 24)
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  params = jax.jit(model.init, static_argnums=3)(jax.random.key(1), tokens, pos,
                                                 masks.causal(8))["params"]
  params = jax.tree.map(lambda a: getattr(a, "value", a), params,
                        is_leaf=lambda a: hasattr(a, "value"))

  @jax.jit
  def both(params):
    ref, kv = model.apply({"params": params}, tokens, pos, masks.causal(8), return_kv=True)
    # The last 3 positions queried against the first 5's cached K/V.
    prefix = tuple(c[:, :, :5] for c in kv)
    tail = model.apply({"params": params}, tokens[:, 5:], pos[:, 5:], masks.full(3, 8),
                       cache=prefix)
    return (ref, kv, tail, _layer_by_layer(cfg, params, tokens, pos, masks.causal(8)),
            _layer_by_layer(cfg, params, tokens[:, 5:], pos[:, 5:], masks.full(3, 8), prefix))

  ref, kv, tail, (logits, kvs, qs), (tail_logits, _, _) = both(params)
  for i in range(cfg.n_layers):
    np.testing.assert_allclose(kvs[i][0], kv[0][i], rtol=1e-5, atol=1e-5)
    assert qs[i].shape == (2, 8, cfg.n_heads, cfg.head_dim)
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tail_logits, tail, rtol=1e-5, atol=1e-5)
