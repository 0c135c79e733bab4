"""Tokenizers: a built-in byte tokenizer and any HF `tokenizer.json`.

Both satisfy `Tokenizer`. The [MASK] token is deliberately absent: the model owns it
(`mask_id = tokenizer.vocab_size`, one extra embedding row), so the same tokenizer serves
AR and diffusion models and checkpoints converted from HF keep their vocabulary intact.
"""
from __future__ import annotations

import os
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

# Names under which HF tokenizers commonly register their special tokens, most specific first.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<|im_end|>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]", "<|startoftext|>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of bdiff needs from a tokenizer."""

  name: str
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]:
    """Text to token ids (no special tokens added)."""

  def encode_array(self, text: str) -> np.ndarray:
    """Like `encode`, as an int32 array (the fast path for whole corpora)."""

  def decode(self, ids: Sequence[int]) -> str:
    """Token ids to text, skipping special ids."""


class ByteTokenizer:
  """UTF-8 bytes 0..255, then bos=256, eos=257, pad=258."""

  name = "bytes"
  bos_id = 256
  eos_id = 257
  pad_id = 258
  vocab_size = 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    # Specials and out-of-range ids (e.g. the model's [MASK]) carry no bytes.
    kept = ids[(ids >= 0) & (ids < 256)].astype(np.uint8)
    return kept.tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class HFTokenizer:
  """Wraps a HF `tokenizer.json` via the `tokenizers` package.

  Args:
    path: path to a `tokenizer.json` file.
    eos_token, bos_token, pad_token: override the special-token names that are otherwise
      looked up among common names. A missing bos falls back to eos, a missing pad to eos.
  """

  def __init__(self, path: str, *, eos_token: str | None = None,
               bos_token: str | None = None, pad_token: str | None = None):
    try:
      import tokenizers  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          "HFTokenizer needs the `tokenizers` package: pip install 'bdiff[hf]'") from e
    if not os.path.isfile(path):
      raise ValueError(f"tokenizer path {path!r} is not a file")
    self.name = os.path.abspath(path)
    self._tok = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.eos_id = self._special_id("eos_token", eos_token, _EOS_NAMES)
    bos = self._special_id("bos_token", bos_token, _BOS_NAMES, required=False)
    pad = self._special_id("pad_token", pad_token, _PAD_NAMES, required=False)
    self.bos_id = self.eos_id if bos is None else bos
    self.pad_id = self.eos_id if pad is None else pad
    self._special = {self.eos_id, self.bos_id, self.pad_id}

  def _special_id(self, arg: str, override: str | None, names: tuple[str, ...],
                  required: bool = True) -> int | None:
    """Id of `override` if given, else of the first of `names` in the vocabulary."""
    if override is not None:
      tid = self._tok.token_to_id(override)
      if tid is None:
        raise ValueError(f"{arg}={override!r} is not in the vocabulary of {self.name}")
      return tid
    for n in names:
      tid = self._tok.token_to_id(n)
      if tid is not None:
        return tid
    if required:
      raise ValueError(f"no {arg} among {names} in {self.name}; pass {arg}= explicitly")
    return None

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_array(self, text: str) -> np.ndarray:
    return np.asarray(self.encode(text), dtype=np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    kept = [i for i in ids if 0 <= i < self.vocab_size and i not in self._special]
    return self._tok.decode(kept, skip_special_tokens=True)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.name!r})"


def get_tokenizer(name: str) -> Tokenizer:
  """Returns the tokenizer `name`: "bytes" or a path to a HF `tokenizer.json`."""
  if name == "bytes":
    return ByteTokenizer()
  if name.endswith(".json") or os.path.isfile(name):
    return HFTokenizer(name)
  raise ValueError(f"tokenizer must be 'bytes' or a path to tokenizer.json, got {name!r}")
