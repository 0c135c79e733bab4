"""Tests for bdiff.data.store: prepare() -> tensorstore round trip."""
import hashlib
import json

import numpy as np
import pytest

from bdiff.data import store
from bdiff.data.tokenizers import ByteTokenizer


@pytest.fixture(name="inputs")
def _inputs(tmp_path):
  (tmp_path / "a.txt").write_text("first document\nwith two lines ✓")
  (tmp_path / "b.txt").write_text("second")
  with open(tmp_path / "c.jsonl", "w", encoding="utf-8") as f:
    for text in ("third", "fourth doc", "fifth"):
      f.write(json.dumps({"text": text, "id": 0}) + "\n")
    f.write("\n")  # blank lines are skipped
  return tmp_path, ["first document\nwith two lines ✓", "second", "third", "fourth doc",
                    "fifth"]


def test_prepare_roundtrip(inputs):
  tmp_path, docs = inputs
  tok = ByteTokenizer()
  meta = store.prepare([str(tmp_path / "*.txt"), str(tmp_path / "c.jsonl")],
                       str(tmp_path / "out"), tok, show_progress=False, chunk_tokens=7)
  expected = np.concatenate([tok.encode(d) + [tok.eos_id] for d in docs])
  array, meta2 = store.open_tokens(str(tmp_path / "out"))
  assert meta2 == meta
  assert (meta["num_tokens"], meta["num_docs"]) == (expected.size, 5)
  assert (meta["tokenizer"], meta["vocab_size"], meta["eos_id"]) == ("bytes", 259, 257)
  raw = b"".join((tmp_path / n).read_bytes() for n in ("a.txt", "b.txt", "c.jsonl"))
  assert meta["source_sha256"] == hashlib.sha256(raw).hexdigest()
  assert array.dtype.numpy_dtype == np.int32
  np.testing.assert_array_equal(array.read().result(), expected)
  np.testing.assert_array_equal(array[5:9].read().result(), expected[5:9])  # lazy slice
  np.testing.assert_array_equal(store.tokenize_documents(docs, tok), expected)


def test_prepare_without_eos_and_overwrite(inputs):
  tmp_path, docs = inputs
  out = str(tmp_path / "out")
  store.prepare([str(tmp_path / "c.jsonl")], out, ByteTokenizer(), show_progress=False)
  meta = store.prepare([str(tmp_path / "b.txt")], out, ByteTokenizer(), append_eos=False,
                       show_progress=False)
  array, _ = store.open_tokens(out)
  assert meta["num_tokens"] == len("second")
  assert ByteTokenizer().decode(array.read().result()) == docs[1]


def test_prepare_errors(inputs, tmp_path):
  src, _ = inputs
  with pytest.raises(ValueError, match="inputs"):
    store.prepare([str(src / "*.nothing")], str(tmp_path / "o"), ByteTokenizer())
  with pytest.raises(ValueError, match="text_field 'body'"):
    store.prepare([str(src / "c.jsonl")], str(tmp_path / "o"), ByteTokenizer(),
                  text_field="body", show_progress=False)
  with pytest.raises(ValueError, match="path"):
    store.open_tokens(str(tmp_path / "nowhere"))
