"""Supervised fine-tuning rows from a JSONL file of conversations (``data.source="sft"``).

Each record (``{"messages": [...]}`` or ``{"prompt", "response"}``) becomes one row of
``train.seq_len`` tokens, right-padded with EOS, in the layout of LLaDA's SFT (Nie et al. 2025,
arXiv 2502.09992) and of the task suite's ``data.answer_only`` rows: the prompt is never
noised, the answer and the EOS padding after it are (the model learns to fill its budget with
EOS as the sampler asks). With a chat template (the tokenizer_config.json beside
``data.tokenizer``) the conversation is rendered as the checkpoint was tuned on, and the
template's end-of-turn tokens are part of the answer (how a chat model learns to stop, as in
Qwen's and Fast-dLLM v2's SFT); without one (the byte tokenizer, or a tokenizer with no chat
template) a row is ``prompt + response + EOS``.

Rows come with per-token roles (:data:`bdiff.data.loader.ROLE_PROMPT` etc.) that the loader
turns into the ``eligible`` (answer + padding) and ``answer`` (answer only) masks.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from bdiff.data import chat
from bdiff.data import loader


def _rows(records, template, tok, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Flat (tokens, roles) of one row per record; a record too long names its ``file:line``."""
  tokens = np.full((len(records), seq_len), tok.eos_id, np.int32)
  roles = np.full((len(records), seq_len), loader.ROLE_PADDING, np.int8)
  for i, (where, messages) in enumerate(records):
    if template is None:
      ids, answer = chat.plain_example(tok, messages)
    else:
      ids, answer = chat.sft_example(template, tok, messages, where)
    if len(ids) > seq_len:
      raise ValueError(f"{where}: the example has {len(ids)} tokens, more than train.seq_len="
                       f"{seq_len}; shorten it or raise train.seq_len")
    if not answer.any():
      raise ValueError(f"{where}: the answer renders to no tokens")
    tokens[i, :len(ids)] = ids
    roles[i, :len(ids)] = np.where(answer, loader.ROLE_ANSWER, loader.ROLE_PROMPT)
  return tokens.reshape(-1), roles.reshape(-1)


def sft_splits(path: str, tokenizer_path: str, tok, seq_len: int, valid_fraction: float
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], dict]:
  """``((train tokens, roles), (valid tokens, roles), fingerprint content)``.

  The last ``valid_fraction`` of the records (at least one) is held out; the training split
  keeps at least one.
  """
  records = chat.read_sft_records(path)
  if len(records) < 2:
    raise ValueError(f"data.path {path!r}: {len(records)} record(s); a training and a "
                     "validation split need at least 2")
  template = chat.template_for_tokenizer(tokenizer_path)
  n_valid = min(len(records) - 1, max(1, int(len(records) * valid_fraction)))
  train = _rows(records[:-n_valid], template, tok, seq_len)
  valid = _rows(records[-n_valid:], template, tok, seq_len)
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  info: dict[str, Any] = {
      "sha256": digest, "records": len(records), "n_valid": n_valid, "sft_seq_len": seq_len,
      "chat_template": None if template is None else hashlib.sha256(
          template.source.encode()).hexdigest()}
  return train, valid, info
