"""Tests for bdiff.data.corpora."""
import sys

import pytest

from bdiff.data import corpora


def test_files_sorted_and_excluded():
  files = corpora.stdlib_files()
  assert len(files) > 100 and list(files) == sorted(files)
  assert "os.py" in files and "json/decoder.py" in files
  for f in files:
    parts = f.split("/")
    assert f.endswith(".py")
    assert not {"site-packages", "test", "tests"} & set(parts[:-1]), f
    assert not f.startswith("idlelib/idle_test/"), f


def test_split_is_deterministic_partition():
  train = corpora.stdlib_paths("train")
  valid = corpora.stdlib_paths("valid")
  assert not set(train) & set(valid)
  assert sorted(train + valid) == list(corpora.stdlib_files())
  assert 0 < len(valid) < 0.1 * len(train)
  assert corpora.stdlib_paths("valid") == valid
  assert set(valid) <= set(corpora.stdlib_paths("valid", valid_fraction=0.3))


def test_documents_and_fingerprint():
  docs = corpora.stdlib_documents(max_docs=3)
  paths = corpora.stdlib_paths(max_docs=3)
  assert len(docs) == 3
  with open(f"{corpora.stdlib_root()}/{paths[0]}", encoding="utf-8") as f:
    assert docs[0] == f.read()
  fp = corpora.stdlib_fingerprint(max_docs=3)
  assert fp == corpora.stdlib_fingerprint(max_docs=3)
  assert len(fp) == 64 and fp != corpora.stdlib_fingerprint(max_docs=4)
  assert corpora.stdlib_fingerprint("train") != corpora.stdlib_fingerprint("valid")
  assert sys.version_info[0] == 3  # fingerprint embeds the version; sanity only


@pytest.mark.parametrize("kwargs, key", [
    ({"split": "test"}, "split"), ({"valid_fraction": 1.0}, "valid_fraction"),
    ({"max_docs": -1}, "max_docs")])
def test_bad_arguments(kwargs, key):
  with pytest.raises(ValueError, match=key):
    corpora.stdlib_documents(**kwargs)
