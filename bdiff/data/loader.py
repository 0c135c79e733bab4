"""Stateless packed-window loader: the batch for step s is a pure function of (seed, s).

Training rows are windows of `seq_len` tokens starting at offsets drawn uniformly from the
flat token stream (documents separated by EOS), so packing needs no preprocessing and resume
needs no iterator state: restoring the step restores the data position. Every host draws the
same global offsets and reads only its own rows, lazily when the source is a tensorstore array.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorstore as ts

Batch = dict[str, np.ndarray]

# Per-token roles of one-example-per-row SFT data (``TokenLoader(roles=...)``).
ROLE_PROMPT, ROLE_ANSWER, ROLE_PADDING = 0, 1, 2


def segment_ids_and_positions(tokens: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Segment ids (+1 after each EOS, from 0) and positions within each segment [rows, len].

  Positions restart at 0 at every segment start (and at the row start, so a document cut by
  the window starts at 0 too). Training reads them only when packed documents are trained
  alone (``train.mask_segments``); otherwise rows are plain windows with positions 0..len-1.
  """
  rows, length = tokens.shape
  is_eos = (tokens == eos_id).astype(np.int32)
  # An EOS belongs to the document it ends; the next token opens a new segment.
  segment_ids = np.cumsum(is_eos, axis=1, dtype=np.int32) - is_eos
  idx = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
  is_start = np.zeros_like(is_eos, dtype=bool)
  is_start[:, 0] = True
  is_start[:, 1:] = is_eos[:, :-1] == 1
  start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=1)
  return segment_ids, (idx - start).astype(np.int32)


def answer_mask(tokens: np.ndarray, sep_id: int) -> np.ndarray:
  """[rows, len] bool: every token after the row's first separator (padding EOS included).

  For one-example-per-row SFT layouts (``row_aligned``). As in LLaDA's SFT recipe (Nie et al.
  2025, arXiv 2502.09992, section 2.3) the prompt is never masked and the answer is supervised
  together with its right-padding EOS tokens, so the model learns to fill the rest of its
  budget with EOS exactly as the sampler asks it to.
  """
  is_sep = tokens == sep_id
  return (np.cumsum(is_sep, axis=1) > 0) & ~is_sep


def answer_span_mask(tokens: np.ndarray, sep_id: int, eos_id: int) -> np.ndarray:
  """[rows, len] bool: the answer's real tokens and the one EOS that ends it, no padding.

  What an answer NELBO is reported over: the padding after the first EOS is trained on (see
  :func:`answer_mask`) but is not part of the answer.
  """
  after = answer_mask(tokens, sep_id)
  eos = after & (tokens == eos_id)
  eos_before = np.cumsum(eos, axis=1) - eos  # EOS tokens of the answer strictly before
  return after & (eos_before == 0)


def _check_roles(roles, num_tokens: int, row_aligned: bool) -> np.ndarray:
  roles = np.asarray(roles)
  if roles.shape != (num_tokens,) or not row_aligned:
    raise ValueError(f"roles must be a 1-D array as long as the source ({num_tokens} tokens) "
                     f"with row_aligned=True, got shape {list(roles.shape)}, row_aligned="
                     f"{row_aligned}")
  return roles.astype(np.int8, copy=False)


class TokenLoader:
  """Batches of packed windows over a flat token array.

  Args:
    source: 1-D integer token array, in memory (np.ndarray) or a tensorstore array.
    seq_len: tokens per row.
    global_batch: rows per step summed over all processes.
    seed: data seed (non-negative).
    eos_id: document separator, used for segment ids.
    process_index, process_count: this host's rows are
      [process_index * local_batch, (process_index + 1) * local_batch) of the global batch.
    row_aligned: rows start at multiples of ``seq_len`` (the source holds one padded example
      per row) instead of at any token.
    answer_sep_id: when set, batches also hold ``eligible`` (see :func:`answer_mask`): only
      answer tokens after this separator are noised and supervised; and ``answer`` (see
      :func:`answer_span_mask`): the answer without its padding, for reporting; needs
      ``row_aligned``.
    roles: instead of a separator, a per-token role array parallel to ``source``
      (``ROLE_PROMPT``, ``ROLE_ANSWER``, ``ROLE_PADDING``), for chat SFT rows whose answer
      start no single token marks: ``eligible`` is answer and padding, ``answer`` the answer;
      needs ``row_aligned``.
  """

  def __init__(self, source: np.ndarray | ts.TensorStore, seq_len: int, global_batch: int,
               seed: int, *, eos_id: int, process_index: int = 0, process_count: int = 1,
               row_aligned: bool = False,
               answer_sep_id: int | None = None, roles: np.ndarray | None = None):
    if isinstance(source, ts.TensorStore):
      if source.rank != 1:
        raise ValueError(f"source must be 1-D, got rank {source.rank}")
      source = source.translate_to[0]  # Sliced views keep their origin; reads assume 0.
    else:
      source = np.asarray(source)
      if source.ndim != 1 or not np.issubdtype(source.dtype, np.integer):
        raise ValueError(f"source must be a 1-D integer array, got {source.dtype}"
                         f"{list(source.shape)}")
      source = source.astype(np.int32, copy=False)
    self.num_tokens = int(source.shape[0])
    if seq_len <= 0 or seq_len > self.num_tokens:
      raise ValueError(f"seq_len must be in [1, num_tokens={self.num_tokens}], got {seq_len}")
    if process_count <= 0 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} must be in [0, process_count="
                       f"{process_count})")
    if global_batch <= 0 or global_batch % process_count:
      raise ValueError(f"global_batch={global_batch} must be a positive multiple of "
                       f"process_count={process_count}")
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}")
    self.source, self.seq_len, self.global_batch, self.seed = source, seq_len, global_batch, seed
    self.eos_id = eos_id
    if answer_sep_id is not None and not row_aligned:
      raise ValueError("answer_sep_id needs row_aligned=True: in packed windows the tokens after "
                       "an answer are the next clean prompt, which sampling never shows")
    if row_aligned and self.num_tokens % seq_len:
      raise ValueError(f"row_aligned: num_tokens={self.num_tokens} is not a multiple of "
                       f"seq_len={seq_len}")
    self.row_aligned, self.answer_sep_id = row_aligned, answer_sep_id
    self.roles = None if roles is None else _check_roles(roles, self.num_tokens, row_aligned)
    self.process_index, self.process_count = process_index, process_count
    self.local_batch = global_batch // process_count

  def offsets(self, step: int) -> np.ndarray:
    """Start offsets of all `global_batch` rows of `step` [global_batch] int64."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    rng = np.random.default_rng([self.seed, step])
    if self.row_aligned:
      rows = rng.integers(0, self.num_tokens // self.seq_len, size=self.global_batch)
      return rows * self.seq_len
    return rng.integers(0, self.num_tokens - self.seq_len + 1, size=self.global_batch)

  def _local(self, global_offsets: np.ndarray) -> np.ndarray:
    lo = self.process_index * self.local_batch
    return global_offsets[lo:lo + self.local_batch]

  def _read_rows(self, starts: np.ndarray) -> np.ndarray:
    """Windows [len(starts), seq_len] int32 starting at `starts`."""
    if isinstance(self.source, np.ndarray):
      return self.source[starts[:, None] + np.arange(self.seq_len)]
    # Issue every read before waiting so tensorstore can fetch them concurrently.
    futures = [self.source[int(s):int(s) + self.seq_len].read() for s in starts]
    rows = [f.result() for f in futures]
    return np.stack(rows).astype(np.int32, copy=False) if rows else np.zeros(
        [0, self.seq_len], np.int32)

  def _make_batch(self, starts: np.ndarray) -> Batch:
    tokens = self._read_rows(starts)
    segment_ids, positions = segment_ids_and_positions(tokens, self.eos_id)
    batch = {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
    if self.answer_sep_id is not None:
      batch["eligible"] = answer_mask(tokens, self.answer_sep_id)
      batch["answer"] = answer_span_mask(tokens, self.answer_sep_id, self.eos_id)
    if self.roles is not None:
      roles = self.roles[starts[:, None] + np.arange(self.seq_len)]
      batch["eligible"] = roles != ROLE_PROMPT
      batch["answer"] = roles == ROLE_ANSWER
    return batch

  def batch(self, step: int) -> Batch:
    """This host's rows of training step `step`: tokens, segment_ids, positions [rows, len].

    ``positions`` are positions within each document (see :func:`segment_ids_and_positions`).
    """
    return self._make_batch(self._local(self.offsets(step)))

  @property
  def num_eval_batches(self) -> int:
    """How many full batches of non-overlapping windows the source holds."""
    return self.num_tokens // self.seq_len // self.global_batch

  def eval_batches(self, num_batches: int | None = None) -> Iterator[Batch]:
    """Deterministic batches of non-overlapping windows, in order from the start.

    Args:
      num_batches: how many (None = all full batches, `num_eval_batches`).
    """
    available = self.num_eval_batches
    if num_batches is None:
      num_batches = available
    if available == 0 or not 0 <= num_batches <= available:
      raise ValueError(f"num_batches={num_batches} must be in [0, {available}] and the source "
                       f"must hold a full batch: it has {self.num_tokens} tokens, "
                       f"{self.seq_len * self.global_batch} per batch")
    return self._eval_iter(num_batches)

  def _eval_iter(self, num_batches: int) -> Iterator[Batch]:
    for b in range(num_batches):
      window = np.arange(b * self.global_batch, (b + 1) * self.global_batch)
      yield self._make_batch(self._local(window * self.seq_len))

  def __repr__(self) -> str:
    return (f"TokenLoader(num_tokens={self.num_tokens}, seq_len={self.seq_len}, "
            f"global_batch={self.global_batch}, seed={self.seed}, "
            f"process={self.process_index}/{self.process_count})")
