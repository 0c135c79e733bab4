"""Tests for bdiff.data.loader: stateless, sharded, packed windows."""
import numpy as np
import pytest

from bdiff.data import store
from bdiff.data.loader import TokenLoader, segment_ids_and_positions
from bdiff.data.tokenizers import ByteTokenizer

EOS = 257


def _stream(n=1009, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 256, size=n).astype(np.int32)
  tokens[rng.random(n) < 0.05] = EOS
  return tokens


def _equal(a, b):
  return all(np.array_equal(a[k], b[k]) for k in ("tokens", "segment_ids", "positions"))


def test_batch_is_pure_function_of_seed_and_step():
  tokens = _stream()
  a = TokenLoader(tokens, 13, 6, seed=3, eos_id=EOS)
  b = TokenLoader(tokens.copy(), 13, 6, seed=3, eos_id=EOS)
  assert _equal(a.batch(5), b.batch(5)) and _equal(a.batch(0), a.batch(0))
  assert not np.array_equal(a.batch(5)["tokens"], a.batch(6)["tokens"])
  assert not np.array_equal(a.batch(5)["tokens"],
                            TokenLoader(tokens, 13, 6, 4, eos_id=EOS).batch(5)["tokens"])
  batch = a.batch(2)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: ((6, 13), np.int32) for k in ("tokens", "segment_ids", "positions")}
  for row, start in zip(batch["tokens"], a.offsets(2)):
    np.testing.assert_array_equal(row, tokens[start:start + 13])


def test_process_shards_concatenate_to_global_batch():
  tokens = _stream()
  full = TokenLoader(tokens, 11, 12, seed=1, eos_id=EOS).batch(9)
  shards = [TokenLoader(tokens, 11, 12, seed=1, eos_id=EOS, process_index=p,
                        process_count=3).batch(9) for p in range(3)]
  for k in full:
    np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), full[k])
  assert shards[0]["tokens"].shape == (4, 11)


def test_segment_ids_and_positions_around_eos():
  e = EOS
  tokens = np.array([[1, 2, e, 3, e, e, 4], [e, 5, 6, 7, 8, 9, e]], np.int32)
  seg, pos = segment_ids_and_positions(tokens, e)
  np.testing.assert_array_equal(seg, [[0, 0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(pos, [[0, 1, 2, 0, 1, 0, 0], [0, 0, 1, 2, 3, 4, 5]])


def test_tensorstore_source_matches_memory(tmp_path):
  tok = ByteTokenizer()
  docs = [f"document number {i} " * (i % 5 + 1) for i in range(40)]
  for i, d in enumerate(docs):
    (tmp_path / f"{i:03d}.txt").write_text(d)
  store.prepare([str(tmp_path / "*.txt")], str(tmp_path / "ds"), tok, show_progress=False,
                chunk_tokens=64)
  array, meta = store.open_tokens(str(tmp_path / "ds"))
  memory = store.tokenize_documents(docs, tok)
  lazy = TokenLoader(array, 17, 8, seed=0, eos_id=meta["eos_id"], process_index=1,
                     process_count=2)
  eager = TokenLoader(memory, 17, 8, seed=0, eos_id=tok.eos_id, process_index=1,
                      process_count=2)
  assert _equal(lazy.batch(4), eager.batch(4))
  # A sliced view (non-zero origin) reads like the corresponding numpy slice.
  view = TokenLoader(array[100:], 17, 8, seed=0, eos_id=tok.eos_id)
  assert _equal(view.batch(1), TokenLoader(memory[100:], 17, 8, 0, eos_id=tok.eos_id).batch(1))
  assert _equal(next(lazy.eval_batches(1)), next(eager.eval_batches(1)))


def test_eval_batches_in_order_without_overlap():
  tokens = _stream(n=200)
  loader = TokenLoader(tokens, 7, 4, seed=0, eos_id=EOS, process_index=1, process_count=2)
  assert loader.num_eval_batches == 200 // 7 // 4
  batches = list(loader.eval_batches())
  assert len(batches) == loader.num_eval_batches
  for b, batch in enumerate(batches):
    for r, row in enumerate(batch["tokens"]):
      start = (4 * b + 2 + r) * 7
      np.testing.assert_array_equal(row, tokens[start:start + 7])
  with pytest.raises(ValueError, match="num_batches"):
    loader.eval_batches(loader.num_eval_batches + 1)


@pytest.mark.parametrize("kwargs, key", [
    ({"seq_len": 0}, "seq_len"), ({"seq_len": 10_000}, "seq_len"),
    ({"global_batch": 5, "process_count": 2}, "global_batch"),
    ({"process_index": 2, "process_count": 2}, "process_index"), ({"seed": -1}, "seed")])
def test_bad_arguments(kwargs, key):
  args = {"seq_len": 8, "global_batch": 4, "seed": 0, **kwargs}
  with pytest.raises(ValueError, match=key):
    TokenLoader(_stream(), eos_id=EOS, **args)
  with pytest.raises(ValueError, match="source"):
    TokenLoader(np.zeros((4, 4), np.int32), 2, 2, 0, eos_id=EOS)
  with pytest.raises(ValueError, match="step"):
    TokenLoader(_stream(), 8, 4, 0, eos_id=EOS).batch(-1)


def test_answer_mask_marks_answer_and_padding_only():
  from bdiff.data.loader import answer_mask
  eos, sep = 9, 5
  rows = np.array([[1, 2, sep, 3, 4, eos, eos, eos],
                   [7, sep, 3, eos, eos, eos, eos, eos]])
  expect = [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
  np.testing.assert_array_equal(answer_mask(rows, sep), np.array(expect, bool))


def test_answer_span_keeps_the_answer_and_its_one_eos_without_padding():
  from bdiff.data.loader import answer_span_mask
  eos, sep = 9, 5
  rows = np.array([[1, 2, sep, 3, 4, eos, eos, eos],
                   [7, sep, 3, eos, eos, eos, eos, eos],
                   [sep, 1, 2, 3, 4, 6, 8, eos]])
  expect = [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1]]
  np.testing.assert_array_equal(answer_span_mask(rows, sep, eos), np.array(expect, bool))
  loader = TokenLoader(rows.reshape(-1), 8, 2, 0, eos_id=eos, row_aligned=True,
                       answer_sep_id=sep)
  batch = loader.batch(0)
  np.testing.assert_array_equal(batch["answer"], answer_span_mask(batch["tokens"], sep, eos))


def test_row_aligned_loader_starts_rows_on_examples():
  seq = 4
  stream = np.arange(40, dtype=np.int32)
  loader = TokenLoader(stream, seq, 6, 0, eos_id=99, row_aligned=True)
  for step in range(3):
    assert (loader.batch(step)["tokens"][:, 0] % seq == 0).all()
  with pytest.raises(ValueError, match="row_aligned"):
    TokenLoader(stream, seq, 2, 0, eos_id=99, answer_sep_id=5)
