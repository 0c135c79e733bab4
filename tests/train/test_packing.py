"""Packed documents are trained as if alone (train.mask_segments).

Rows of the token stream hold several documents. With ``train.mask_segments`` every document
gets its own RoPE positions, its own blocks counted from its first token and attention inside
itself only, so the training loss of a packed row equals the sum of the losses of its documents
run one by one, each under the plain static BD3 mask, on the same noise draw.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import diffusion, masks
from bdiff.data import segment_ids_and_positions
from bdiff.diffusion import corruption
from bdiff.models import default_model_config, make_model, two_stream_logits
from bdiff.train import loop
from configs import tiny

V, EOS, B, N = 13, 12, 4, 16
# Document lengths per row (EOS-terminated except a last one cut by the window).
ROWS = [(6, 7, 3), (3, 9, 4)]


def _tokens():
  rng = np.random.RandomState(0)
  rows = []
  for lengths in ROWS:
    row = []
    for j, length in enumerate(lengths):
      doc = list(rng.randint(0, EOS, length))
      if j < len(lengths) - 1:
        doc[-1] = EOS
      row += doc
    rows.append(row)
  return np.asarray(rows, np.int32)


def _model(impl="xla"):
  cfg = default_model_config()
  cfg.update(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
             mlp_dim=64, dtype="float32", attention_impl=impl)
  model = make_model(cfg)
  params = model.init(jax.random.key(1), jnp.zeros((1, 2 * N), jnp.int32),
                      jnp.zeros((1, 2 * N), jnp.int32), masks.BD3Training(N, B))
  return model, params


def _spans(segment_ids_row):
  """(start, end) of each document of one row."""
  bounds = np.flatnonzero(np.diff(segment_ids_row)) + 1
  edges = [0, *bounds.tolist(), len(segment_ids_row)]
  return list(zip(edges[:-1], edges[1:]))


def _alone_logits(model, params, xt_doc, x0_doc, context_causal):
  """One document alone: positions from 0, blocks from its start, the static BD3 mask."""
  length = xt_doc.shape[0]
  padded = -(-length // B) * B
  keep = np.concatenate([np.arange(length), padded + np.arange(length)])
  dense = masks.BD3Training(padded, B, context_causal=context_causal).dense()
  mask = dense[np.ix_(keep, keep)]  # the document's tokens only: no padding exists
  tokens = jnp.concatenate([xt_doc, x0_doc])[None]
  pos = jnp.concatenate([jnp.arange(length), jnp.arange(length)])[None]
  return model.apply(params, tokens, pos, jnp.asarray(mask)[None], num_logits=length)[0]


def _alone_logits_fn(model, params, seg, context_causal):
  def logits_fn(xt, x0, want_clean=False):
    del want_clean
    rows = []
    for r in range(xt.shape[0]):
      parts = [_alone_logits(model, params, xt[r, s:e], x0[r, s:e], context_causal)
               for s, e in _spans(seg[r])]
      rows.append(jnp.concatenate(parts))
    return jnp.stack(rows), None
  return logits_fn


def _packed_logits_fn(model, params, seg, pos, context_causal):
  def logits_fn(xt, x0, want_clean=False):
    return two_stream_logits(model, params, xt, x0, B, context_causal=context_causal,
                             want_clean=want_clean, segment_ids=jnp.asarray(seg),
                             positions=jnp.asarray(pos))
  return logits_fn


@pytest.mark.parametrize("context_causal", [False, True])
def test_packed_logits_equal_each_document_alone(context_causal):
  model, params = _model()
  x0 = _tokens()
  seg, pos = segment_ids_and_positions(x0, EOS)
  xt = np.where(np.random.RandomState(2).rand(*x0.shape) < 0.5, V, x0).astype(np.int32)
  packed, _ = _packed_logits_fn(model, params, seg, pos, context_causal)(
      jnp.asarray(xt), jnp.asarray(x0))
  alone, _ = _alone_logits_fn(model, params, seg, context_causal)(xt, x0)
  np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)
  # The row-level mask with row positions (the old behaviour) differs on these rows.
  old, _ = two_stream_logits(model, params, jnp.asarray(xt), jnp.asarray(x0), B,
                             context_causal=context_causal, segment_ids=jnp.asarray(seg))
  assert float(jnp.max(jnp.abs(old - alone))) > 1e-3


@pytest.mark.parametrize("overrides", [{}, {"token_shift": True, "weighting": "none",
                                             "reduction": "labelled_mean"}])
def test_packed_training_loss_equals_documents_alone_on_one_draw(overrides):
  model, params = _model()
  x0 = _tokens()
  seg, pos = segment_ids_and_positions(x0, EOS)
  cfg = diffusion.default_diffusion_config()
  cfg.update(block_size=B, **overrides)
  rng = jax.random.key(5)
  run = lambda fn: diffusion.training_loss(fn, jnp.asarray(x0), rng, cfg, mask_id=V,
                                           positions=jnp.asarray(pos))
  packed, pm = run(_packed_logits_fn(model, params, seg, pos, False))
  alone, am = run(_alone_logits_fn(model, params, seg, False))
  assert float(pm["masked_fraction"]) > 0
  np.testing.assert_allclose(packed, alone, rtol=1e-5)
  np.testing.assert_allclose(pm["masked_ce"], am["masked_ce"], rtol=1e-5)


def test_blocks_count_from_each_document_start():
  _, pos = segment_ids_and_positions(_tokens(), EOS)
  blocks = np.asarray(corruption.token_blocks(jnp.asarray(pos), B))
  # Row 0: documents of 6, 7, 3 tokens at 0, 6, 13: blocks start at 0, 4 | 6, 10 | 13.
  np.testing.assert_array_equal(blocks[0], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3])
  # Every document block uses one diffusion time.
  t_blocks = jnp.arange(2 * (N // B), dtype=jnp.float32).reshape(2, -1) / 10
  t = np.asarray(corruption.per_token(t_blocks, B, jnp.asarray(blocks)))
  for r, (row_pos, row_t) in enumerate(zip(pos, t)):
    starts = np.flatnonzero(row_pos % B == 0)
    for s, e in zip(starts, [*starts[1:], N]):
      assert len(set(row_t[s:e].tolist())) == 1, (r, s, e)


def test_one_document_rows_are_unchanged():
  """Positions 0..n-1 in one segment: the packed path is the plain BD3 path, bit for bit."""
  model, params = _model()
  x0 = jnp.asarray(np.random.RandomState(3).randint(0, V, (2, N)), jnp.int32)
  seg, pos = jnp.zeros((2, N), jnp.int32), jnp.broadcast_to(jnp.arange(N), (2, N))
  cfg = diffusion.default_diffusion_config()
  cfg.block_size = B
  plain = lambda xt, x, want_clean=False: two_stream_logits(model, params, xt, x, B)
  packed = _packed_logits_fn(model, params, seg, pos, False)
  a = diffusion.training_loss(plain, x0, jax.random.key(0), cfg, mask_id=V)[0]
  b = diffusion.training_loss(packed, x0, jax.random.key(0), cfg, mask_id=V, positions=pos)[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_pallas_cannot_run_per_document_blocks():
  model, params = _model(impl="pallas")
  x0 = jnp.asarray(_tokens())
  seg, pos = segment_ids_and_positions(_tokens(), EOS)
  with pytest.raises(ValueError, match="attention_impl"):
    two_stream_logits(model, params, x0, x0, B, segment_ids=jnp.asarray(seg),
                      positions=jnp.asarray(pos))


@pytest.mark.parametrize("section,key,value,match", [
    ("model", "attention_impl", "pallas", "model.attention_impl"),
    ("diffusion", "resample", True, "diffusion.resample"),
    ("diffusion", "aux_ar_weight", 0.5, "diffusion.aux_ar_weight"),
])
def test_packing_rejects_what_it_cannot_do_exactly(tmp_path, section, key, value, match):
  cfg = tiny.get_config()
  cfg.train.update(mask_segments=True, progress=False)
  cfg[section][key] = value
  with pytest.raises(ValueError, match=match):
    loop.Trainer.build(cfg, str(tmp_path), None)


def test_packed_tiny_run_trains_and_evaluates(tmp_path):
  cfg = tiny.get_config()
  cfg.train.update(mask_segments=True, steps=2, log_every=1, eval_batches=1, progress=False,
                   global_batch=8)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  out = loop.train(cfg, str(tmp_path / "run"),
                   mesh=loop.sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval_nll"])
