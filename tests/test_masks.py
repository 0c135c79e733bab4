"""Masks against independent dense constructions written from the spec's tables."""
import itertools

import numpy as np
import pytest

from bdiff import masks

CASES = [(8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (12, 12), (15, 5), (16, 16)]


def bd3_by_quadrants(n, b, context_causal=False):
  """The BD3-LM two-stream mask (arXiv 2503.09573, Fig. 2) built quadrant by quadrant in loops."""
  m = np.zeros((2 * n, 2 * n), bool)
  for q, k in itertools.product(range(2 * n), repeat=2):
    q_clean, k_clean = q >= n, k >= n
    bq, bk = (q % n) // b, (k % n) // b
    if not q_clean and not k_clean:
      m[q, k] = bq == bk
    elif not q_clean and k_clean:
      m[q, k] = bk < bq
    elif q_clean and k_clean:
      m[q, k] = (k % n) <= (q % n) if context_causal else bk <= bq
  return m


def block_causal_by_loops(q_len, kv_len, b, off):
  m = np.zeros((q_len, kv_len), bool)
  for q, k in itertools.product(range(q_len), range(kv_len)):
    m[q, k] = k // b <= (q + off) // b
  return m


@pytest.mark.parametrize("n,b", CASES)
def test_bd3_training_matches_quadrants(n, b):
  got = masks.bd3_training(n, b).dense()
  assert got.shape == (2 * n, 2 * n) and got.dtype == bool
  np.testing.assert_array_equal(got, bd3_by_quadrants(n, b))
  assert got.any(axis=1).all()  # every query row sees at least itself


@pytest.mark.parametrize("n,b", CASES)
def test_context_causal_matches_quadrants(n, b):
  np.testing.assert_array_equal(masks.context_causal(n, b).dense(),
                                bd3_by_quadrants(n, b, context_causal=True))


@pytest.mark.parametrize("q_len,kv_len,b,off", [(8, 8, 1, 0), (8, 8, 8, 0), (4, 12, 4, 8),
                                                (5, 13, 3, 8), (16, 16, 4, 0), (3, 10, 2, 7)])
def test_block_causal_matches_loops(q_len, kv_len, b, off):
  np.testing.assert_array_equal(masks.block_causal(q_len, kv_len, b, q_offset=off).dense(),
                                block_causal_by_loops(q_len, kv_len, b, off))


def cache_window_by_loops(width, cache_size, b):
  m = np.zeros((width, cache_size + width), bool)
  for q, k in itertools.product(range(width), range(cache_size + width)):
    m[q, k] = k < cache_size or (k - cache_size) // b <= q // b
  return m


@pytest.mark.parametrize("width,cache_size,b", [(4, 8, 4), (8, 12, 4), (6, 7, 3), (5, 0, 2),
                                                (1, 5, 1), (6, 10, 6)])
def test_cache_window_matches_loops(width, cache_size, b):
  mask = masks.cache_window(width, cache_size, b)
  assert mask.shape == (width, cache_size + width)
  np.testing.assert_array_equal(mask.dense(), cache_window_by_loops(width, cache_size, b))
  if cache_size % b == 0:  # the aligned case is the offset block-causal mask
    np.testing.assert_array_equal(
        mask.dense(), masks.block_causal(width, cache_size + width, b, cache_size).dense())


def test_degenerate_block_sizes():
  n = 8
  # B = 1: a noisy token sees only itself in the noisy stream and clean tokens before it.
  m = masks.bd3_training(n, 1).dense()
  np.testing.assert_array_equal(m[:n, :n], np.eye(n, dtype=bool))
  np.testing.assert_array_equal(m[:n, n:], np.tri(n, k=-1, dtype=bool))
  # B = n: the noisy half is fully bidirectional and never sees the clean half (MDLM).
  m = masks.bd3_training(n, n).dense()
  assert m[:n, :n].all() and not m[:n, n:].any()
  # Block causal with B = 1 is token causal.
  np.testing.assert_array_equal(masks.block_causal(n, n, 1).dense(), np.tri(n, dtype=bool))


def test_token_masks():
  np.testing.assert_array_equal(masks.causal(6).dense(), np.tri(6, dtype=bool))
  np.testing.assert_array_equal(masks.causal(3, 7, q_offset=4).dense(),
                                np.tri(3, 7, k=4, dtype=bool))
  w = masks.sliding_window(6, 6, left=2, right=1).dense()
  expect = np.array([[abs_ok(q, k) for k in range(6)] for q in range(6)])
  np.testing.assert_array_equal(w, expect)
  assert masks.full(3, 5).dense().all()
  both = (masks.causal(6) & masks.sliding_window(6, 6, 2)).dense()
  np.testing.assert_array_equal(both, np.tri(6, dtype=bool) & ~np.tri(6, k=-3, dtype=bool))


def abs_ok(q, k):
  return q - 2 <= k <= q + 1


def test_segment_mask():
  seg = np.array([[0, 0, 1, 1, 1]])
  m = masks.segment_mask(seg, seg)
  assert m.shape == (1, 5, 5)
  assert m[0, 0, 1] and not m[0, 1, 2] and m[0, 4, 2]


ALL_MASKS = [masks.causal(37, 53, 5), masks.sliding_window(41, 60, 7, 3, 4),
             masks.block_causal(48, 80, 8, 32), masks.block_causal(30, 45, 5, 7),
             masks.bd3_training(24, 4), masks.bd3_training(24, 1), masks.bd3_training(24, 24),
             masks.context_causal(24, 6), masks.full(7, 9),
             masks.cache_window(8, 40, 4), masks.cache_window(10, 23, 5),
             masks.causal(40) & masks.sliding_window(40, 40, 5)]


@pytest.mark.parametrize("mask", ALL_MASKS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("bq,bk", [(1, 1), (4, 4), (3, 5), (8, 16), (128, 128)])
def test_tile_layout_matches_dense(mask, bq, bk):
  dense = mask.dense()
  q_pad, k_pad = -(-mask.q_len // bq) * bq, -(-mask.kv_len // bk) * bk
  allowed = np.zeros((q_pad, k_pad), bool)
  valid = np.zeros((q_pad, k_pad), bool)
  allowed[:mask.q_len, :mask.kv_len] = dense
  valid[:mask.q_len, :mask.kv_len] = True
  tiles = lambda a: a.reshape(q_pad // bq, bq, k_pad // bk, bk)  # noqa: E731
  any_ = tiles(allowed).any(axis=(1, 3))
  all_ = (tiles(allowed) | ~tiles(valid)).all(axis=(1, 3))
  expect = np.where(all_, masks.FULL, np.where(any_, masks.PARTIAL, masks.EMPTY))
  np.testing.assert_array_equal(mask.tile_layout(bq, bk), expect)


def test_bd3_layout_builds_no_dense_mask_and_is_quarter_dense():
  import tracemalloc  # pylint: disable=g-import-not-at-top
  mask = masks.bd3_training(8192, 16)
  masks._tile_layout_cached.cache_clear()  # pylint: disable=protected-access
  tracemalloc.start()
  try:
    layout = mask.tile_layout(128, 128)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < mask.q_len * mask.kv_len // 16, f"{peak} bytes: an S x S array was built"
  assert 0.24 < (layout > 0).mean() < 0.28


@pytest.mark.parametrize("call,arg", [
    (lambda: masks.bd3_training(10, 4), "block_size"),
    (lambda: masks.bd3_training(0, 1), "seq_len"),
    (lambda: masks.bd3_training(8, 0), "block_size"),
    (lambda: masks.block_causal(4, 8, -2), "block_size"),
    (lambda: masks.block_causal(0, 8, 2), "q_len"),
    (lambda: masks.block_causal(4, 8, 2, q_offset=-1), "q_offset"),
    (lambda: masks.causal(4, 4) & masks.causal(4, 5), "shapes"),
    (lambda: masks.cache_window(0, 8, 4), "width"),
    (lambda: masks.cache_window(4, -1, 4), "cache_size"),
    (lambda: masks.cache_window(4, 8, 0), "block_size"),
])
def test_bad_arguments_name_the_argument(call, arg):
  with pytest.raises(ValueError, match=arg):
    call()


def test_packed_bd3_training_is_bd3_for_one_document_and_block_diagonal_for_two():
  n, b = 16, 4
  for cc in (False, True):
    one = masks.packed_bd3_training(np.arange(n)[None], np.zeros((1, n), int), b, cc)[0]
    np.testing.assert_array_equal(one, masks.BD3Training(n, b, context_causal=cc).dense())
  # Two documents of 8 tokens, each starting on a block boundary: the two-stream mask of each
  # document alone, and nothing across them.
  pos = np.concatenate([np.arange(8), np.arange(8)])[None]
  seg = np.repeat([0, 1], 8)[None]
  got = masks.packed_bd3_training(pos, seg, b)[0]
  alone = masks.BD3Training(8, b).dense()
  idx = [np.r_[0:8, 16:24], np.r_[8:16, 24:32]]  # (noisy, clean) rows of each document
  for d in range(2):
    np.testing.assert_array_equal(got[np.ix_(idx[d], idx[d])], alone)
    assert not got[np.ix_(idx[d], idx[1 - d])].any()
