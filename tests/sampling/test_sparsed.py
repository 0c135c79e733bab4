"""SparseD (arXiv 2509.24014, INV-WZQ/SparseD) in the full-attention loop.

The pattern rule is re-derived in numpy on random queries/keys (ragged rows, GQA); the plan's
execution is compared between the Pallas kernel (interpret mode) and the dense masked xla
path; the loop runs on the tiny sharpened random full-attention model (ragged prompts,
semi-AR blocks of 8, one token per step so every row takes the same T = 24 steps).
"""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import full_attention_params, generate_rows, random_prompts, tiny_config

from bdiff import attention as attention_lib
from bdiff import masks
from bdiff import runs
from bdiff.sampling import generate as gen
from bdiff.sampling import sparsed
from bdiff.sampling.config import validate_run_sample_config
from pallas_kernels.block_sparse_attention import plan as plan_lib

V = 23
WIDTH, NEW = 13, 24
LENGTHS = np.array([13, 5, 9, 7], np.int32)
IDS = np.arange(10, 14, dtype=np.int32)


def _np_top(score, k):
  """Indices of the k best entries (lowest index first on ties)."""
  return np.argsort(-score, kind="stable")[:k]


def _np_pattern(q, k, length, limit, tile, select):
  """SparseD's rule for one row, written out: [heads, n, n] kept tiles."""
  s, h, d = q.shape
  k = np.repeat(k, h // k.shape[1], axis=1)
  n, n_row = -(-s // tile), -(-limit // tile)
  first_gen = min(-(-length // tile), n_row - 1)
  keep = np.zeros((h, n, n), bool)
  for head in range(h):
    logits = q[:limit, head] @ k[:limit, head].T / math.sqrt(d)  # valid queries and keys
    for restricted in (False, True):
      lo = first_gen * tile if restricted else 0
      p = np.exp(logits[:, lo:] - logits[:, lo:].max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      padded = np.zeros((n * tile, n * tile))
      padded[:limit, lo:limit] = p
      score = padded.reshape(n, tile, n, tile).mean(axis=(1, 3))
      tiles = np.arange(first_gen if restricted else 0, n_row)
      count = min(math.floor(len(tiles) * select) + 1, len(tiles))
      for i in range(n):
        for j in tiles[_np_top(score[i, tiles], count)]:
          if (j >= first_gen) == restricted:
            keep[head, i, j] = True
  return keep


def test_pattern_matches_numpy_rule():
  """Two passes OR-ed: top-k over all keys kept on prompt-side tiles, top-k with the softmax
  over generation keys kept on generation tiles; per row (ragged prompts and budgets)."""
  b, s, h, hkv, d, tile, select = 3, 22, 4, 2, 8, 4, 0.3
  q = np.asarray(jax.random.normal(jax.random.key(0), (b, s, h, d)), np.float32) * 2
  k = np.asarray(jax.random.normal(jax.random.key(1), (b, s, hkv, d)), np.float32) * 2
  lengths, limit = np.array([9, 4, 12]), np.array([21, 14, 22])
  pattern = jax.jit(sparsed.layer_pattern, static_argnames=("tile", "select"))
  got = np.asarray(pattern(jnp.asarray(q), jnp.asarray(k), jnp.asarray(lengths),
                           jnp.asarray(limit), tile=tile, select=select))
  for r in range(b):
    want = _np_pattern(q[r].astype(np.float64), k[r].astype(np.float64), lengths[r], limit[r],
                       tile, select)
    np.testing.assert_array_equal(got[r], want, err_msg=f"row {r}")
  assert 0 < got.mean() < 1  # a real selection: neither empty nor everything


def test_pallas_plan_equals_masked_xla():
  """Attention under a runtime plan (per row and head): the Pallas kernel in
  interpret mode (only the listed tiles computed) equals the xla path under the plan's dense
  mask, with segment ids hiding a row's tail; the plan really masks (output moves)."""
  b, s, h, hkv, d, tile = 2, 16, 2, 1, 8, 8
  keys = jax.random.split(jax.random.key(2), 4)
  q = jax.random.normal(keys[0], (b, s, h, d))
  k, v = (jax.random.normal(x, (b, s, hkv, d)) for x in keys[1:3])
  sel = jax.random.bernoulli(keys[3], 0.5, (b, h, s // tile, s // tile))
  sel = sel.at[..., 0].set(True)  # every query tile keeps a key
  plan = plan_lib.plan_from_selection(sel, masks.full(s, s), block_q=tile, block_k=tile,
                                      capacity=s // tile)
  seg = (jnp.ones((b, s), jnp.int32),
         (jnp.arange(s)[None, :] < jnp.array([[16], [11]])).astype(jnp.int32))
  kernel = attention_lib.attend_under_plan(q, k, v, masks.full(s, s), plan, impl="pallas",
                                           backend="tpu_interpret", segment_ids=seg)
  dense = attention_lib.attend_under_plan(q, k, v, None, plan, segment_ids=seg)
  np.testing.assert_allclose(np.asarray(kernel), np.asarray(dense), atol=1e-5, rtol=1e-5)
  full = attention_lib.attend(q, k, v, None, segment_ids=seg)
  assert np.abs(np.asarray(dense) - np.asarray(full)).max() > 1e-2
  with pytest.raises(ValueError, match="sparsity plan replaces the attention mask"):
    attention_lib.attend_under_plan(q, k, v, masks.causal(s), plan, segment_ids=seg)


def sampler(**sample):
  cfg = tiny_config(V, 16, attention="bidirectional")
  cfg.sample.update(max_new_tokens=NEW, block_size=8, strategy="fixed_k", k=1)
  cfg.sample.update(**sample)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg, eos_id=None)


SPARSE = dict(sparse_attention="sparsed", sparsed_skip=0.2, sparsed_tile=4)


@pytest.fixture(scope="module")
def params():
  return full_attention_params(V)


@pytest.fixture(scope="module")
def prompts():
  return random_prompts(V, WIDTH)


def run(params, prompts, config, rows=(0, 1, 2, 3)):
  return generate_rows(params, prompts, config, LENGTHS, IDS, rows)


@pytest.fixture(scope="module")
def dense(params, prompts):
  return run(params, prompts, sampler())


def test_select_one_keeps_everything_and_equals_dense(params, prompts, dense):
  """select = 1 keeps every key tile: the pattern is dense and the decode equals the dense
  one token for token."""
  out = run(params, prompts, sampler(**SPARSE, sparsed_select=1.0))
  np.testing.assert_array_equal(out["attention_density"], 1.0)
  np.testing.assert_array_equal(out["tokens"], dense["tokens"])


def test_sparse_pattern_runs_and_is_batch_invariant(params, prompts, dense):
  """select = 0.3 keeps about a third of the tiles; the sparse steps change the decode (the
  pattern is really applied), and a row decodes the same alone as in the batch."""
  config = sampler(**SPARSE, sparsed_select=0.3)
  out = run(params, prompts, config)
  assert out["done"].all()
  assert ((out["attention_density"] > 0.2) & (out["attention_density"] < 0.6)).all()
  assert (out["tokens"] != dense["tokens"]).any()
  for r in (1,):
    alone = run(params, prompts, config, rows=(r,))
    for key in ("tokens", "attention_density", "nfe_denoise"):
      np.testing.assert_array_equal(alone[key][0], out[key][r], err_msg=f"{key} row {r}")


def test_switch_step():
  """t_s = floor(T * skip) + 1 over T = blocks x steps (3 blocks of 8 one-token steps)."""
  assert sparsed.total_steps(sampler()) == 24
  assert sparsed.switch_step(sampler(**SPARSE)) == math.floor(24 * 0.2) + 1


@pytest.mark.parametrize("override, match", [
    (dict(sparsed_skip=1.5), r"sample.sparsed_skip must be a number in \[0, 1\]"),
    (dict(sparsed_select=-0.1), r"sample.sparsed_select must be a number in \[0, 1\]"),
    (dict(sparsed_tile=0), "sample.sparsed_tile must be a positive integer"),
    (dict(sparse_attention="flex"), "sample.sparse_attention must be one of"),
    (dict(cache="prefix"), "sample.sparse_attention='sparsed'.*sample.cache='none'"),
])
def test_config_checks(override, match):
  with pytest.raises(ValueError, match=match):
    sampler(**{**SPARSE, **override})


def test_block_causal_model_is_refused():
  cfg = tiny_config(V, 8)
  cfg.sample.update(**SPARSE)
  with pytest.raises(ValueError, match="sample.sparse_attention='sparsed'.*bidirectional"):
    validate_run_sample_config(cfg)


def test_pallas_tiles_are_checked():
  cfg = tiny_config(V, 16, attention="bidirectional", attention_impl="pallas")
  cfg.sample.update(**{**SPARSE, "sparsed_tile": 12})
  with pytest.raises(ValueError, match="sample.sparsed_tile=12.*multiples of 8"):
    validate_run_sample_config(cfg)


def test_sample_records_name_sparsed():
  """``bdiff sample`` records say SparseD ran and at what density (approximate, not silent)."""
  fake = types.SimpleNamespace(config=sampler(**SPARSE), decode=lambda ids: "x" * len(ids))
  out = dict(num_tokens=np.array([2]), tokens=np.array([[5, 6, -1]]), nfe_denoise=np.array([3]),
             nfe_commit=np.array([0]), tokens_per_forward=np.array([0.5]),
             positions_computed=np.array([30]), attention_density=np.array([0.25]))
  record = runs.Sampler._record(fake, "p", out, 0, 1.0)
  assert record["cache"] == "none" and record["sparse_attention"] == "sparsed"
  assert record["attention_density"] == 0.25
  del out["attention_density"]
  assert "attention_density" not in runs.Sampler._record(fake, "p", out, 0, 1.0)
