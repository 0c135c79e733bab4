"""FLOP counting against a count by hand, tied and untied; MFU over the given devices."""
import types

import jax
import numpy as np
import pytest

from bdiff import flops
from bdiff import masks
from bdiff.models import count_params, make_model
from configs import owt_bd3lm, tiny


def _num_params(cfg) -> tuple[int, int]:
  """(all parameters, embedding-table parameters) of the config's model."""
  n = cfg.train.seq_len
  shapes = jax.eval_shape(make_model(cfg.model).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, n), np.int32),
                          jax.ShapeDtypeStruct((1, n), np.int32))["params"]
  return count_params(shapes), count_params(shapes["embed"])


def _hand_count(cfg) -> float:
  """Written out from the architecture, not from the parameter count."""
  m, n, blk = cfg.model, cfg.train.seq_len, cfg.diffusion.block_size
  d, h, kv, hd = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim
  per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * m.mlp_dim + 2 * d
  body = m.n_layers * per_layer + d  # + final norm
  streams = 2 * n  # noisy and clean tokens through every layer
  head = 2 * d * m.vocab_size * n  # logits of the noisy stream only
  pairs = n * blk + n * n  # allowed (query, key) pairs of the two-stream mask
  attn = m.n_layers * h * 4 * hd * pairs  # QK^T and PV, 2 FLOPs per multiply-add each
  forward = 2 * body * streams + head + attn
  return 3 * forward * cfg.train.global_batch  # backward = 2x forward


@pytest.mark.parametrize("tied", [True, False])
def test_train_flops_match_a_hand_count(tied):
  cfg = tiny.get_config()
  cfg.model.tie_embeddings = tied
  got = flops.train_flops_per_step(cfg, *_num_params(cfg))
  assert got == pytest.approx(_hand_count(cfg), rel=1e-12)


def test_padded_embedding_rows_are_not_counted_as_matmuls():
  cfg = tiny.get_config()
  cfg.model.vocab_pad_multiple = 128  # 260 rows -> 384: padding rows are never multiplied
  assert _num_params(cfg)[1] == 384 * cfg.model.d_model
  got = flops.train_flops_per_step(cfg, *_num_params(cfg))
  assert got == pytest.approx(_hand_count(cfg), rel=1e-12)


def test_untied_owt_head_is_counted_once():
  """The old count put the untied head into the body too (both streams) plus once more."""
  cfg = owt_bd3lm.get_config()
  cfg.model.tie_embeddings = False
  cfg.train.update(global_batch=1)
  got = flops.train_flops_per_step(cfg, *_num_params(cfg))
  assert got == pytest.approx(_hand_count(cfg), rel=1e-12)


def test_attended_keys_match_the_dense_mask():
  for cc in (False, True):
    mask = masks.BD3Training(16, 4, context_causal=cc).dense()
    assert flops.bd3_attended_keys_per_query(16, 4, cc) == mask.sum() / 32


def test_mfu_divides_by_the_devices_given():
  h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
  out = flops.utilisation(989e12, 1.0, 4, device=h100)
  assert out["mfu"] == pytest.approx(0.25)
  assert out["tflops"] == pytest.approx(989.0)
  with pytest.raises(ValueError, match="num_devices"):
    flops.utilisation(1.0, 1.0, 0)
