"""Sparsity plan invariants for static and dynamic plans."""
import tracemalloc

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import masks
from pallas_kernels.block_sparse_attention import plan as plan_lib
from pallas_kernels.block_sparse_attention import reference

from bsa_common import MASKS


def _tables(plan, g=(0, 0)):
  return [np.asarray(x)[g] for x in (plan.kv_count, plan.kv_idx, plan.kv_full,
                                     plan.q_count, plan.q_idx, plan.q_full)]


def _listed(count, idx, full, n):
  """Host expansion of one list form: int [rows, n] with 0 unlisted, 1 partial, 2 full."""
  out = np.zeros((len(count), n), np.int8)
  for i, c in enumerate(count):
    for j in range(c):
      assert out[i, idx[i, j]] == 0, "duplicate tile"
      out[i, idx[i, j]] = 1 + full[i, j]
  return out


def check_invariants(plan, g=(0, 0), expected=None):
  """Plan invariants for group g: the backward lists are the transpose of the forward lists;
  lists ascend and are padded by repeating the last entry; no listed tile is empty; FULL flags
  are exact (static plans) or sound (dynamic ones); the listed tiles cover exactly
  ``expected`` (the dense bool mask the plan must define), when given."""
  cnt, idx, full, qcnt, qidx, qfull = _tables(plan, g)
  nq, nk = plan.num_q_tiles, plan.num_kv_tiles
  fwd = _listed(cnt, idx, full, nk)
  bwd = _listed(qcnt, qidx, qfull, nq)
  np.testing.assert_array_equal(fwd, bwd.T, err_msg="transposition")
  for counts, lists in ((cnt, idx), (qcnt, qidx)):
    for c, row in zip(counts, lists):
      assert np.all(np.diff(row[:c]) > 0), "ascending"
      pad = row[c - 1] if c else 0
      assert np.all(row[c:] == pad), "padding by repetition"
  # Coverage, exact flags, no empty tile listed: against the element rule tile by tile.
  q = np.arange(nq * plan.block_q)[:, None]
  k = np.arange(nk * plan.block_k)[None, :]
  rule = np.asarray(plan.allowed(q, k)) & (q < plan.q_len)
  in_range = (q < plan.q_len) & (k < plan.kv_len)
  tiles = lambda x: x.reshape(nq, plan.block_q, nk, plan.block_k).swapaxes(1, 2)
  rule_t, range_t = tiles(rule), tiles(np.broadcast_to(in_range, rule.shape))
  listed = fwd > 0
  assert not np.any(listed & ~rule_t.any(axis=(2, 3))), "tile with no allowed element listed"
  holds_padded_keys = (np.arange(nk) == nk - 1) & (plan.kv_len % plan.block_k > 0)
  all_true = (rule_t | ~range_t).all(axis=(2, 3)) & ~holds_padded_keys[None]
  assert not np.any((fwd == 2) & ~all_true), "full flag on a non-full tile"
  if not plan.dynamic:
    np.testing.assert_array_equal(fwd == 2, listed & all_true, err_msg="exact full flags")
  elem = np.repeat(np.repeat(fwd, plan.block_q, 0), plan.block_k, 1)
  covered = ((elem == 2) | ((elem == 1) & rule))[:plan.q_len, :plan.kv_len]
  if expected is not None:
    np.testing.assert_array_equal(covered, expected, err_msg="coverage")
  return covered


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("tiles", [(16, 16), (32, 16), (16, 64)])
def test_static_plan_invariants(name, tiles):
  mask = MASKS[name]
  plan = plan_lib.plan_for_mask(mask, block_q=tiles[0], block_k=tiles[1])
  assert plan.group_shape == (1, 1) and not plan.dynamic
  check_invariants(plan, expected=mask.dense())
  if tiles == (32, 16):  # the reference's traced expansion agrees (eager jnp: one case)
    np.testing.assert_array_equal(np.asarray(reference.dense_mask(plan))[0, 0], mask.dense())


def test_static_plan_is_cached_and_empty_rows_are_legal():
  mask = MASKS["empty_rows"]
  plan = plan_lib.plan_for_mask(mask, block_q=16, block_k=16)
  assert plan is plan_lib.plan_for_mask(mask, block_q=16, block_k=16)
  cnt, idx = np.asarray(plan.kv_count)[0, 0], np.asarray(plan.kv_idx)[0, 0]
  assert cnt[-1] == 0 and np.all(idx[-1] == 0)


@pytest.mark.parametrize("beta,expected_share,kmax", [(16, 0.266, 33), (128, 0.258, 32)])
def test_bd3_plan_at_8192_builds_no_dense_mask_and_is_a_quarter_dense(beta, expected_share,
                                                                      kmax):
  """The plan comes from the tile layout: its peak host memory is far below one S x S bool
  array (speed is measured in experiments/, not asserted here)."""
  mask = masks.bd3_training(4096, beta)
  plan_lib._static_plan.cache_clear()  # pylint: disable=protected-access
  masks._tile_layout_cached.cache_clear()  # pylint: disable=protected-access
  tracemalloc.start()
  try:
    plan = plan_lib.plan_for_mask(mask, block_q=128, block_k=128)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < mask.q_len * mask.kv_len // 16, f"{peak} bytes: an S x S array was built"
  # BD3 allows about n^2 of its (2n)^2 pairs (noisy->earlier clean blocks and clean->clean
  # block-causal, each ~n^2/2, plus the diagonal blocks); listed tiles add the partial ones.
  assert abs(plan_lib.density(plan) - expected_share) < 0.002
  assert plan.max_kv_tiles == kmax


def _random_scores(key, shape):
  # Coarse values so ties happen (top_k must still list each tile once).
  return jnp.round(jax.random.uniform(key, shape) * 4)


@pytest.mark.parametrize("name", ["full", "bd3", "causal_offset", "empty_rows"])
def test_dynamic_plan_invariants(name):
  mask = MASKS[name]
  bq = bk = 16
  kind = plan_lib.tile_kinds(mask, bq, bk)
  nq, nk = kind.shape
  k = min(3, nk)
  forced = plan_lib.diagonal_tiles(mask, bq, bk)
  scores = _random_scores(jax.random.key(1), (2, 3, nq, nk))
  plan = jax.jit(lambda s: plan_lib.plan_from_scores(s, mask, k=k, block_q=bq, block_k=bk,
                                                     forced=forced))(scores)
  assert plan.dynamic and plan.group_shape == (2, 3) and plan.max_kv_tiles == k
  dense = mask.dense()
  counts = np.asarray(plan.kv_count)
  assert counts.max() <= k
  for g in np.ndindex(2, 3):
    covered = check_invariants(plan, g)
    assert not np.any(covered & ~dense), "top-k plan attends outside the structural mask"
    fwd = _listed(*_tables(plan, g)[:3], nk)
    # Every forced, non-empty tile is listed; rows with fewer than k allowed tiles list all.
    assert np.all(fwd[forced & (kind > 0)] > 0)
    allowed_tiles = (kind > 0).sum(axis=1)
    np.testing.assert_array_equal(counts[g], np.minimum(allowed_tiles, k))
    np.testing.assert_array_equal(reference.dense_mask(plan)[g], covered)


def test_dynamic_plan_compiles_once_per_selection_size():
  mask = masks.bd3_training(64, 8)
  kind = plan_lib.tile_kinds(mask, 16, 16)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def build(scores):
    return plan_lib.plan_from_scores(scores, mask, k=3, block_q=16, block_k=16)

  for seed in range(4):
    plan = build(_random_scores(jax.random.key(seed), (1, 2) + kind.shape))
    check_invariants(plan, (0, 1))


def test_dynamic_plan_rejects_bad_selection_shapes():
  mask = masks.full(64, 64)
  with pytest.raises(ValueError, match="selection must be"):
    plan_lib.plan_from_selection(jnp.ones((1, 1, 3, 4), bool), mask, block_q=16,
                                 block_k=16, capacity=2)
  with pytest.raises(ValueError, match="k must be"):
    plan_lib.plan_from_scores(jnp.zeros((1, 1, 4, 4)), mask, k=5, block_q=16, block_k=16)


@pytest.mark.parametrize("name", ["bd3", "empty_rows", "causal_offset"])
def test_allowed_pairs_counts_the_dense_mask(name):
  mask = MASKS[name]
  plan = plan_lib.plan_for_mask(mask, block_q=16, block_k=32)
  pairs, tiles = plan_lib.allowed_pairs(plan)
  assert pairs == mask.dense().sum()
  assert tiles == np.asarray(plan.kv_count).sum() * 16 * 32
