"""Token store: text files -> one flat int32 token array in tensorstore (zarr).

Layout of a prepared directory:
  <out_dir>/tokens/         zarr array, shape [num_tokens], int32, documents separated by EOS
  <out_dir>/metadata.json   num_tokens, num_docs, tokenizer, vocab_size, eos_id, source_sha256

Each host later opens the array lazily and reads only the windows of its own batch rows.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import tensorstore as ts
import tqdm

from bdiff.data.tokenizers import Tokenizer

TOKENS_DIR = "tokens"
METADATA_FILE = "metadata.json"
_FORMAT_VERSION = 1


def expand_inputs(patterns: Sequence[str] | str) -> list[str]:
  """Files named by `patterns` (paths or globs), each glob sorted, order otherwise kept."""
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise ValueError(f"inputs: {pattern!r} matches no file")
    files.extend(matches)
  return files


def iter_documents(paths: Sequence[str], *, text_field: str = "text",
                   digest: Any = None) -> Iterator[str]:
  """Documents of `paths`: a `.jsonl` file gives one per line (its `text_field`), any other
  file is one document. If given, `digest` (a hashlib object) is fed every file's bytes."""
  for path in paths:
    with open(path, "rb") as f:
      raw = f.read()
    if digest is not None:
      digest.update(raw)
    text = raw.decode("utf-8", errors="replace")
    if not path.endswith(".jsonl"):
      yield text
      continue
    for lineno, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      record = json.loads(line)
      if not isinstance(record, dict) or text_field not in record:
        raise ValueError(f"text_field {text_field!r} missing at {path}:{lineno}")
      yield str(record[text_field])


def encode_documents(docs: Iterable[str], tokenizer: Tokenizer, *,
                     append_eos: bool = True, show_progress: bool = False,
                     total: int | None = None) -> Iterator[np.ndarray]:
  """int32 token array per document, with EOS appended if `append_eos`."""
  eos = np.asarray([tokenizer.eos_id], dtype=np.int32)
  for doc in tqdm.tqdm(docs, desc="tokenize", unit="doc", total=total,
                       disable=not show_progress):
    ids = tokenizer.encode_array(doc)
    yield np.concatenate([ids, eos]) if append_eos else ids


def tokenize_documents(docs: Sequence[str], tokenizer: Tokenizer, *,
                       append_eos: bool = True, show_progress: bool = False) -> np.ndarray:
  """All documents as one flat int32 array (in memory), separated by EOS."""
  parts = list(encode_documents(docs, tokenizer, append_eos=append_eos,
                                show_progress=show_progress, total=len(docs)))
  return np.concatenate(parts) if parts else np.zeros([0], np.int32)


def _tokens_spec(out_dir: str) -> dict[str, Any]:
  path = os.path.join(os.path.abspath(out_dir), TOKENS_DIR)
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": path}}


class _ChunkedWriter:
  """Appends to a growing 1-D zarr array, writing whole chunks so no chunk is rewritten."""

  def __init__(self, out_dir: str, chunk_tokens: int):
    self.array = ts.open(_tokens_spec(out_dir), create=True, delete_existing=True,
                         dtype=ts.int32, shape=[0],
                         chunk_layout=ts.ChunkLayout(chunk_shape=[chunk_tokens])).result()
    self.chunk = chunk_tokens
    self.size = 0
    self._pending: list[np.ndarray] = []
    self._pending_size = 0

  def append(self, ids: np.ndarray) -> None:
    self._pending.append(ids)
    self._pending_size += ids.size
    if self._pending_size >= self.chunk:
      self._flush(final=False)

  def _flush(self, final: bool) -> None:
    buf = np.concatenate(self._pending) if self._pending else np.zeros([0], np.int32)
    n = buf.size if final else buf.size - buf.size % self.chunk
    if n:
      self.array = self.array.resize(exclusive_max=[self.size + n]).result()
      self.array[self.size:self.size + n].write(buf[:n]).result()
      self.size += n
    self._pending = [buf[n:]]
    self._pending_size = buf.size - n

  def close(self) -> int:
    self._flush(final=True)
    return self.size


def prepare(inputs: Sequence[str], out_dir: str, tokenizer: Tokenizer, *,
            append_eos: bool = True, show_progress: bool = True,
            text_field: str = "text", chunk_tokens: int = 1 << 20) -> dict[str, Any]:
  """Tokenizes text/jsonl files into one flat token array at `out_dir`.

  Args:
    inputs: files or globs; `.jsonl` files hold one document per line in `text_field`,
      any other file is one document.
    out_dir: output directory (created; an existing token array there is replaced).
    tokenizer: a `Tokenizer`.
    append_eos: end every document with EOS (document boundaries for packing).
    show_progress: show a tqdm bar over documents.
    text_field: jsonl field holding the text.
    chunk_tokens: zarr chunk length (also the write granularity).

  Returns:
    The metadata dict, also written to `<out_dir>/metadata.json`.
  """
  if chunk_tokens <= 0:
    raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
  paths = expand_inputs(inputs)
  os.makedirs(out_dir, exist_ok=True)
  digest = hashlib.sha256()
  writer = _ChunkedWriter(out_dir, chunk_tokens)
  num_docs = 0
  docs = iter_documents(paths, text_field=text_field, digest=digest)
  for ids in encode_documents(docs, tokenizer, append_eos=append_eos,
                              show_progress=show_progress):
    writer.append(ids)
    num_docs += 1
  num_tokens = writer.close()
  if num_tokens == 0:
    raise ValueError(f"inputs {list(inputs)} contain no tokens")
  meta = {
      "format_version": _FORMAT_VERSION, "num_tokens": num_tokens, "num_docs": num_docs,
      "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
      "eos_id": tokenizer.eos_id, "append_eos": append_eos,
      "source_sha256": digest.hexdigest(), "inputs": [os.path.abspath(p) for p in paths],
  }
  with open(os.path.join(out_dir, METADATA_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  return meta


def open_tokens(path: str) -> tuple[ts.TensorStore, dict[str, Any]]:
  """Opens a prepared directory: (lazy 1-D int32 tensorstore array, metadata dict)."""
  meta_path = os.path.join(path, METADATA_FILE)
  if not os.path.isfile(meta_path):
    raise ValueError(f"path {path!r} is not a prepared token directory (no {METADATA_FILE})")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  array = ts.open(_tokens_spec(path), open=True, read=True).result()
  if array.shape != (meta["num_tokens"],):
    raise ValueError(f"path {path!r}: array shape {array.shape} does not match "
                     f"num_tokens={meta['num_tokens']} in {METADATA_FILE}")
  return array, meta
