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
import logging
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import tensorstore as ts
import tqdm

from bdiff.data.tokenizers import Tokenizer

log = logging.getLogger("bdiff")

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


ON_ERROR = ("fail", "skip")


class InputProblems:
  """What to do with an unreadable input line (``on_error``): raise, or skip and count it.

  Every problem names ``file:line``; skipped ones are kept (the first ``keep``) for the report.
  """

  def __init__(self, on_error: str = "fail", keep: int = 20):
    if on_error not in ON_ERROR:
      raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    self.on_error, self.keep = on_error, keep
    self.skipped = 0
    self.examples: list[str] = []
    self.empty_docs = 0

  def report(self, where: str, why: str) -> None:
    message = f"{where}: {why}"
    if self.on_error == "fail":
      raise ValueError(f"{message} (on_error='skip' skips and counts such lines)")
    self.skipped += 1
    if len(self.examples) < self.keep:
      self.examples.append(message)

  def summary(self) -> dict[str, Any]:
    return {"skipped": self.skipped, "skipped_examples": self.examples,
            "empty_docs": self.empty_docs}


def _decode(raw: bytes, path: str, problems: InputProblems, lineno: int | None = None):
  """Strict UTF-8 (never silently U+FFFD), or None (reported at file:line of the bad byte)."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1 if lineno is None else lineno
    problems.report(f"{path}:{line}", f"not UTF-8 text (byte {raw[e.start]:#04x})")
    return None


def _jsonl_text(line: str, where: str, text_field: str, problems: InputProblems):
  """The text of one JSONL record, or None (reported) when the record has no string there."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    problems.report(where, f"not valid JSON ({e.msg}, column {e.colno})")
    return None
  if not isinstance(record, dict) or text_field not in record:
    problems.report(where, f"text_field {text_field!r} missing (an object with a "
                    f"{text_field!r} string per line is expected)")
    return None
  text = record[text_field]
  if not isinstance(text, str):
    kind = "null" if text is None else type(text).__name__
    problems.report(where, f"text_field {text_field!r} must be a string, got {kind}")
    return None
  return text


def _file_texts(path: str, raw: bytes, text_field: str, problems: InputProblems):
  """Texts of one file: a `.jsonl` file gives one per line, any other file is one text."""
  if not path.endswith(".jsonl"):
    text = _decode(raw, path, problems)
    if text is not None:
      yield text
    return
  for lineno, line_bytes in enumerate(raw.split(b"\n"), 1):
    where = f"{path}:{lineno}"
    line = _decode(line_bytes, path, problems, lineno)
    if line is not None and line.strip():
      text = _jsonl_text(line, where, text_field, problems)
      if text is not None:
        yield text


def iter_documents(paths: Sequence[str], *, text_field: str = "text", digest: Any = None,
                   problems: InputProblems | None = None) -> Iterator[str]:
  """Non-empty documents of `paths`: a `.jsonl` file gives one per line (its `text_field`, a
  string), any other file is one document. Input must be UTF-8. Bad lines go to `problems`
  (default: raise a ValueError naming file:line); empty documents are counted there and dropped.
  If given, `digest` (a hashlib object) is fed every file's bytes."""
  problems = InputProblems() if problems is None else problems
  for path in paths:
    with open(path, "rb") as f:
      raw = f.read()
    if digest is not None:
      digest.update(raw)
    for text in _file_texts(path, raw, text_field, problems):
      if text:
        yield text
      else:
        problems.empty_docs += 1


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


def check_output_dir(out_dir: str, overwrite: bool = False) -> None:
  """Refuse, before any work, an `out_dir` that prepare() must not replace.

  A missing or empty directory is fine; one holding a prepared dataset only with `overwrite`;
  a file or a directory with anything else never (it is not ours to delete).
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"out {out_dir!r} exists and is not a directory")
  if not os.path.isdir(out_dir) or not os.listdir(out_dir):
    return
  if not os.path.isfile(os.path.join(out_dir, METADATA_FILE)):
    raise ValueError(f"out {out_dir!r} is a non-empty directory without a prepared dataset "
                     f"({METADATA_FILE}); choose another output directory")
  if not overwrite:
    raise ValueError(f"out {out_dir!r} already holds a prepared dataset; pass overwrite=True "
                     "(bdiff prepare --overwrite) to replace it")


def _move_into_place(tmp: str, out_dir: str) -> None:
  """Rename the finished `tmp` to `out_dir`; an old dataset there is deleted only afterwards."""
  old = None
  if os.path.isdir(out_dir):
    old = tmp + ".old"
    os.rename(out_dir, old)
  try:
    os.rename(tmp, out_dir)
  except OSError:
    if old is not None:
      os.rename(old, out_dir)
    raise
  if old is not None:
    shutil.rmtree(old)


def _write_tokens(paths, tmp, tokenizer, problems, *, append_eos, show_progress, text_field,
                  chunk_tokens) -> dict[str, Any]:
  """Tokenize `paths` into the directory `tmp`; returns the metadata (also written there)."""
  digest = hashlib.sha256()
  writer = _ChunkedWriter(tmp, chunk_tokens)
  num_docs = 0
  docs = iter_documents(paths, text_field=text_field, digest=digest, problems=problems)
  for ids in encode_documents(docs, tokenizer, append_eos=append_eos,
                              show_progress=show_progress):
    writer.append(ids)
    num_docs += 1
  num_tokens = writer.close()
  if num_docs == 0:
    raise ValueError(f"inputs {list(paths)} hold no text ({problems.empty_docs} empty "
                     f"documents, {problems.skipped} lines skipped)")
  meta = {
      "format_version": _FORMAT_VERSION, "num_tokens": num_tokens, "num_docs": num_docs,
      "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
      "eos_id": tokenizer.eos_id, "append_eos": append_eos,
      "source_sha256": digest.hexdigest(), "inputs": [os.path.abspath(p) for p in paths],
      **problems.summary(),
  }
  with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  return meta


def prepare(inputs: Sequence[str], out_dir: str, tokenizer: Tokenizer, *,
            append_eos: bool = True, show_progress: bool = True,
            text_field: str = "text", chunk_tokens: int = 1 << 20, overwrite: bool = False,
            on_error: str = "fail") -> dict[str, Any]:
  """Tokenizes text/jsonl files into one flat token array at `out_dir`.

  The array is written to a temporary directory beside `out_dir` and renamed into place only
  when complete, so a failure (bad input, full disk, Ctrl-C) leaves any old dataset intact.

  Args:
    inputs: files or globs; `.jsonl` files hold one document per line in `text_field`,
      any other file is one document. All input must be UTF-8.
    out_dir: output directory (parents created). An existing dataset there is replaced only
      with `overwrite`.
    tokenizer: a `Tokenizer`.
    append_eos: end every document with EOS (document boundaries for packing).
    show_progress: show a tqdm bar over documents.
    text_field: jsonl field holding the text (a string).
    chunk_tokens: zarr chunk length (also the write granularity).
    overwrite: replace a dataset already at `out_dir`.
    on_error: "fail" raises on the first bad line (naming file:line); "skip" skips and counts
      bad lines (`skipped` and `skipped_examples` in the metadata).

  Returns:
    The metadata dict, also written to `<out_dir>/metadata.json`.
  """
  if chunk_tokens <= 0:
    raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
  problems = InputProblems(on_error)
  out_dir = os.path.normpath(os.path.abspath(out_dir))
  check_output_dir(out_dir, overwrite)
  paths = expand_inputs(inputs)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    meta = _write_tokens(paths, tmp, tokenizer, problems, append_eos=append_eos,
                         show_progress=show_progress, text_field=text_field,
                         chunk_tokens=chunk_tokens)
    _move_into_place(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if problems.skipped:
    log.warning("prepare: skipped %d bad input lines, first: %s", problems.skipped,
                problems.examples[0])
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
