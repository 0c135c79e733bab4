"""Model switches that converted checkpoints need, each off by default."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import masks
from bdiff.models import default_model_config, embed_rows, make_model, validate_model_config
from bdiff.models.layers import rope_frequencies

V = 17


def small(**kw):
  cfg = default_model_config()
  cfg.update(vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
             mlp_dim=48, dtype="float32", **kw)
  return cfg


def init_and_apply(cfg, tokens):
  model = make_model(cfg)
  n = tokens.shape[1]
  pos = jnp.broadcast_to(jnp.arange(n), tokens.shape)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens, pos,
                                   masks.block_causal(n, n, 1)))
  return model, params, model.apply(params, tokens, pos, masks.block_causal(n, n, 1))


def test_defaults_keep_bdiff_layout():
  cfg = small()
  assert embed_rows(cfg) == V + 1 and make_model(cfg).mask_id == V


def test_in_vocab_mask_token_keeps_the_table():
  cfg = small(mask_token_id=5)
  model, params, _ = init_and_apply(cfg, jnp.zeros((1, 4), jnp.int32))
  assert params["params"]["embed"].shape == (V, 32) and model.mask_id == 5


def test_vocab_padding_rounds_rows_and_leaves_logits():
  tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, V)
  _, params, logits = init_and_apply(small(), tokens)
  cfg = small(vocab_pad_multiple=8)
  model = make_model(cfg)
  table = params["params"]["embed"]
  padded = jnp.concatenate([table, jnp.full((24 - V - 1, 32), 7.0)])  # junk in the padding
  assert embed_rows(cfg) == 24
  p2 = {"params": {**params["params"], "embed": padded}}
  pos = jnp.broadcast_to(jnp.arange(6), tokens.shape)
  out = model.apply(p2, tokens, pos, masks.block_causal(6, 6, 1))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(logits))


def test_unscaled_tied_head_is_the_plain_embedding_product():
  tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, V)
  _, params, scaled = init_and_apply(small(), tokens)
  model = make_model(small(tied_logit_scale=False))
  pos = jnp.broadcast_to(jnp.arange(6), tokens.shape)
  plain = model.apply(params, tokens, pos, masks.block_causal(6, 6, 1))
  np.testing.assert_allclose(np.asarray(scaled), np.asarray(plain) * 32 ** -0.5, rtol=1e-6)


def test_qkv_bias_params_carry_head_axes():
  cfg = small(qkv_bias=True)
  model = make_model(cfg)
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32)))
  box = boxed["params"]["layers"]["attn"]["k"]["bias"]
  assert box.names == ("layers", "kv_heads", "head_dim")


def test_llama3_rope_scaling_bands():
  """Short wavelengths kept, long ones divided by factor, the band between interpolated."""
  cfg = small()
  base = rope_frequencies(16, 10000.0)
  np.testing.assert_allclose(base, 10000.0 ** (-np.arange(8) / 8))
  rs = cfg.rope_scaling
  rs.update(type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=64)
  scaled = rope_frequencies(16, 10000.0, rs)
  wavelen = 2 * np.pi / base
  high, low = wavelen < 16, wavelen > 64
  assert high.any() and low.any() and (~high & ~low).any()
  np.testing.assert_array_equal(scaled[high], base[high])
  np.testing.assert_allclose(scaled[low], base[low] / 4)
  mid = ~high & ~low
  assert np.all((scaled[mid] < base[mid]) & (scaled[mid] > base[mid] / 4))


@pytest.mark.parametrize("key,value,match", [
    ("mask_token_id", V, "model.mask_token_id"),
    ("mask_token_id", -2, "model.mask_token_id"),
    ("attention", "causal", "model.attention"),
    ("vocab_pad_multiple", 0, "model.vocab_pad_multiple"),
])
def test_bad_switch_is_named(key, value, match):
  cfg = small()
  cfg[key] = value
  with pytest.raises(ValueError, match=match):
    validate_model_config(cfg)


def test_bad_rope_scaling_is_named():
  cfg = small()
  cfg.rope_scaling.type = "yarn"
  with pytest.raises(ValueError, match="model.rope_scaling.type"):
    validate_model_config(cfg)
