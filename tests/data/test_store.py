"""Tests for bdiff.data.store: prepare() -> tensorstore round trip."""
import hashlib
import json
import re

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
                       show_progress=False, overwrite=True)
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


def _good_store(tmp_path):
  (tmp_path / "good.txt").write_text("a good dataset")
  out = str(tmp_path / "ds")
  store.prepare([str(tmp_path / "good.txt")], out, ByteTokenizer(), show_progress=False)
  return out


def _read(out):
  array, meta = store.open_tokens(out)
  return ByteTokenizer().decode(array.read().result()), meta


def test_failed_prepare_leaves_the_old_dataset_readable(tmp_path):
  out = _good_store(tmp_path)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    store.prepare([str(bad)], out, ByteTokenizer(), show_progress=False, overwrite=True)
  text, meta = _read(out)
  assert text.startswith("a good dataset") and meta["num_docs"] == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "ds", "good.txt"]


def test_prepare_refuses_to_replace_a_dataset_without_overwrite(tmp_path):
  out = _good_store(tmp_path)
  (tmp_path / "other.txt").write_text("other")
  with pytest.raises(ValueError, match="already holds a prepared dataset.*overwrite"):
    store.prepare([str(tmp_path / "other.txt")], out, ByteTokenizer(), show_progress=False)
  assert _read(out)[0].startswith("a good dataset")
  store.prepare([str(tmp_path / "other.txt")], out, ByteTokenizer(), show_progress=False,
                overwrite=True)
  assert _read(out)[0].startswith("other")


def test_prepare_never_deletes_a_directory_that_is_not_a_dataset(tmp_path):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "keep.txt").write_text("mine")
  (tmp_path / "a.txt").write_text("text")
  with pytest.raises(ValueError, match="without a prepared dataset"):
    store.prepare([str(tmp_path / "a.txt")], str(tmp_path / "notes"), ByteTokenizer(),
                  show_progress=False, overwrite=True)
  assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_empty_input_is_an_error_not_a_one_token_corpus(tmp_path):
  out = _good_store(tmp_path)
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="hold no text"):
    store.prepare([str(tmp_path / "empty.txt")], out, ByteTokenizer(), show_progress=False,
                  overwrite=True)
  assert _read(out)[0].startswith("a good dataset")


@pytest.mark.parametrize("line, why", [
    ('{"text": null}', "must be a string, got null"),
    ('{"text": 12345}', "must be a string, got int"),
    ('{"text": ["a", "b"]}', "must be a string, got list"),
    ('["text"]', "text_field 'text' missing"),
    ('{"text": "x"', "not valid JSON"),
])
def test_bad_jsonl_lines_fail_naming_file_and_line(tmp_path, line, why):
  src = tmp_path / "in.jsonl"
  src.write_text('{"text": "ok"}\n' + line + "\n")
  with pytest.raises(ValueError, match=f"in.jsonl:2: .*{re.escape(why)}"):
    store.prepare([str(src)], str(tmp_path / "o"), ByteTokenizer(), show_progress=False)
  assert not (tmp_path / "o").exists()


def test_non_utf8_input_fails_naming_the_line(tmp_path):
  src = tmp_path / "bin.txt"
  src.write_bytes(b"line one\nline \xff two\n")
  with pytest.raises(ValueError, match=r"bin.txt:2: not UTF-8"):
    store.prepare([str(src)], str(tmp_path / "o"), ByteTokenizer(), show_progress=False)


def test_on_error_skip_counts_and_reports_bad_lines(tmp_path):
  src = tmp_path / "in.jsonl"
  src.write_bytes(b'{"text": "one"}\n{"text": null}\n\xff\n{"text": ""}\n{"text": "two"}\n')
  meta = store.prepare([str(src)], str(tmp_path / "o"), ByteTokenizer(), show_progress=False,
                       on_error="skip")
  assert (meta["num_docs"], meta["skipped"], meta["empty_docs"]) == (2, 2, 1)
  assert [e.split(": ")[0][-10:] for e in meta["skipped_examples"]] == ["in.jsonl:2", "in.jsonl:3"]
  assert _read(str(tmp_path / "o"))[0] == "onetwo"  # EOS decodes to nothing
  with pytest.raises(ValueError, match="on_error"):
    store.prepare([str(src)], str(tmp_path / "p"), ByteTokenizer(), on_error="ignore")
