"""From the `data` config section to tokenizer + train/valid loaders + a corpus fingerprint."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from bdiff.data import corpora
from bdiff.data import sft as sft_lib
from bdiff.data import store
from bdiff.data import tasks as tasks_lib
from bdiff.data.loader import TokenLoader
from bdiff.data.tokenizers import Tokenizer, get_tokenizer

SOURCES = ("stdlib", "tasks", "tensorstore", "text", "sft")
# Task validation examples come from a seed far from any training seed a sweep would use.
_VALID_SEED_OFFSET = 1_000_003
Config = ml_collections.ConfigDict
Split = tuple[Any, Any, dict[str, Any]]  # (train tokens, valid tokens, fingerprint content)


@dataclasses.dataclass(frozen=True)
class DataBundle:
  """Everything a run needs from the data: the loaders and what they were built from."""
  tokenizer: Tokenizer
  train: TokenLoader
  valid: TokenLoader
  fingerprint: str


def default_data_config() -> ml_collections.ConfigDict:
  """The `data` config section with its defaults."""
  return ml_collections.ConfigDict({
      "source": "stdlib",          # stdlib | tasks | tensorstore | text | sft
      "path": "",                  # tensorstore: prepared dir; text: file or glob; sft: JSONL
      "tokenizer": "bytes",        # "bytes" or a path to tokenizer.json
      "tasks": "copy,reverse,sort",  # source=tasks: comma-separated names (or a list)
      "num_task_examples": 2000,   # source=tasks: training examples per task
      "max_docs": 0,               # stdlib/text: documents per split (0 = all)
      "valid_fraction": 0.02,      # held-out share (files, tokens or task examples)
      "text_field": "text",        # source=text: jsonl field holding the text
      "answer_only": False,        # tasks/sft: SFT rows (one example, EOS-padded), answers only
  })


def task_names(tasks: str | Sequence[str]) -> list[str]:
  """Task names from a comma-separated string or a list."""
  names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
  return [n.strip() for n in names if n.strip()]


def training_prompts(cfg: Config, seed: int) -> dict[str, frozenset[str]]:
  """Each task's training prompts in a ``source="tasks"`` run (``seed`` = its train.seed);
  empty for every other source. Evaluation skips these (``tasks.held_out_examples``)."""
  if cfg.source != "tasks":
    return {}
  return {name: _task_prompts(name, cfg.num_task_examples, seed)
          for name in task_names(cfg.tasks)}


def training_examples(cfg: Config, task: str | tasks_lib.Task, seed: int,
                      n: int | None = None) -> list[tasks_lib.Example]:
  """The first ``n`` (default: all) of one task's training examples in a ``source="tasks"``
  run (``seed`` = its train.seed): the stream its training rows are built from."""
  if cfg.source != "tasks":
    raise ValueError(f"training examples need a data.source='tasks' run, got "
                     f"data.source={cfg.source!r}")
  total = cfg.num_task_examples
  return tasks_lib.make_examples(task, total if n is None else min(n, total), seed)


@functools.lru_cache(maxsize=32)
def _task_prompts(name: str, n: int, seed: int) -> frozenset[str]:
  # Cached: an experiment evaluates one run under many settings, and regenerating a suite's
  # 8 x 20000 examples costs ~2.4 s each time (a pure function of its arguments).
  return frozenset(ex.prompt for ex in tasks_lib.make_examples(name, n, seed))


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def validate_data_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key of the `data` section."""
  expected = set(default_data_config().keys())
  keys = set(cfg.keys())
  missing, unknown = sorted(expected - keys), sorted(keys - expected)
  _check(not missing, f"data.{(missing or [''])[0]} is missing")
  _check(not unknown, f"data.{(unknown or [''])[0]} is not a known key; "
         f"known: {sorted(expected)}")
  _check(cfg.source in SOURCES, f"data.source must be one of {SOURCES}, got {cfg.source!r}")
  _check(cfg.tokenizer == "bytes" or os.path.isfile(str(cfg.tokenizer)),
         f"data.tokenizer must be 'bytes' or an existing tokenizer.json, got {cfg.tokenizer!r}")
  _check(0.0 < cfg.valid_fraction < 1.0,
         f"data.valid_fraction must be in (0, 1), got {cfg.valid_fraction}")
  _check(isinstance(cfg.max_docs, int) and cfg.max_docs >= 0,
         f"data.max_docs must be an int >= 0, got {cfg.max_docs!r}")
  if cfg.source in ("tensorstore", "text", "sft"):
    _check(bool(cfg.path), f"data.path is required for data.source={cfg.source!r}")
  if cfg.source == "sft":
    _check(os.path.isfile(cfg.path), f"data.path {cfg.path!r} is not a file (data.source='sft' "
           "reads a JSONL file of messages or prompt/response records)")
    _check(cfg.answer_only, "data.source='sft' trains on answers only: set data.answer_only=True")
  if cfg.source == "tensorstore":
    _check(os.path.isfile(os.path.join(cfg.path, store.METADATA_FILE)),
           f"data.path {cfg.path!r} is not a prepared token directory (run `bdiff prepare`)")
  if cfg.source == "tasks":
    names = task_names(cfg.tasks)
    _check(bool(names), "data.tasks must name at least one task")
    unknown = [n for n in names if n not in tasks_lib.TASKS]
    _check(not unknown, f"data.tasks: unknown task(s) {unknown}; known: "
           f"{sorted(tasks_lib.TASKS)}")
    _check(isinstance(cfg.num_task_examples, int) and cfg.num_task_examples > 0,
           f"data.num_task_examples must be a positive int, got {cfg.num_task_examples!r}")
  _check(not cfg.answer_only or cfg.source in ("tasks", "sft"),
         f"data.answer_only needs data.source 'tasks' (answers follow "
         f"{tasks_lib.ANSWER_SEPARATOR!r}) or 'sft', got source {cfg.source!r}")


def _split_tail(tokens: Any, valid_fraction: float) -> tuple[Any, Any]:
  """(train, valid): the last `valid_fraction` of a token array is held out."""
  n = int(tokens.shape[0])
  n_valid = max(1, int(n * valid_fraction))
  return tokens[:n - n_valid], tokens[n - n_valid:]


def _stdlib_tokens(cfg: Config, tok: Tokenizer) -> Split:
  splits, info = [], {}
  for split in ("train", "valid"):
    docs = corpora.stdlib_documents(cfg.max_docs, split, cfg.valid_fraction)
    splits.append(store.tokenize_documents(docs, tok))
    info[split] = corpora.stdlib_fingerprint(split, cfg.valid_fraction, cfg.max_docs)
  return splits[0], splits[1], info


def _sft_rows(docs: list[str], tok: Tokenizer, seq_len: int) -> np.ndarray:
  """One example per ``seq_len`` row, right-padded with EOS (LLaDA SFT layout), flattened."""
  rows = np.full((len(docs), seq_len), tok.eos_id, np.int32)
  for i, doc in enumerate(docs):
    ids = tok.encode(doc)
    _check(len(ids) < seq_len, f"data.answer_only: an example of {len(ids)} tokens (+ EOS) does "
           f"not fit train.seq_len={seq_len}")
    rows[i, :len(ids)] = ids
  return rows.reshape(-1)


def _task_tokens(cfg: Config, tok: Tokenizer, seed: int, seq_len: int) -> Split:
  names = task_names(cfg.tasks)
  n_train = cfg.num_task_examples
  n_valid = max(1, math.ceil(n_train * cfg.valid_fraction))
  train = tasks_lib.task_documents(names, n_train, seed)
  seen = set(train)
  # Held out means unseen: drop validation texts that also occur in training.
  valid = [d for d in tasks_lib.task_documents(names, n_valid, seed + _VALID_SEED_OFFSET)
           if d not in seen]
  info = {"tasks": names, "n_train": n_train, "n_valid": len(valid), "seed": seed,
          "sha256": hashlib.sha256("\n".join(train + valid).encode()).hexdigest()}
  if cfg.answer_only:
    info["sft_seq_len"] = seq_len
    return _sft_rows(train, tok, seq_len), _sft_rows(valid, tok, seq_len), info
  return store.tokenize_documents(train, tok), store.tokenize_documents(valid, tok), info


def _text_tokens(cfg: Config, tok: Tokenizer) -> Split:
  digest = hashlib.sha256()
  files = store.expand_inputs(cfg.path)
  docs = list(store.iter_documents(files, text_field=cfg.text_field, digest=digest))
  docs = docs[:cfg.max_docs] if cfg.max_docs else docs
  train, valid = _split_tail(store.tokenize_documents(docs, tok), cfg.valid_fraction)
  return train, valid, {"files": len(files), "docs": len(docs), "sha256": digest.hexdigest()}


def _tensorstore_tokens(cfg: Config, tok: Tokenizer) -> Split:
  array, meta = store.open_tokens(cfg.path)
  if (meta["tokenizer"], meta["vocab_size"]) != (tok.name, tok.vocab_size):
    raise ValueError(f"data.tokenizer {tok.name!r} (vocab {tok.vocab_size}) differs from "
                     f"the one {cfg.path!r} was prepared with: {meta['tokenizer']!r} "
                     f"(vocab {meta['vocab_size']})")
  train, valid = _split_tail(array, cfg.valid_fraction)
  return train, valid, {"num_tokens": meta["num_tokens"], "sha256": meta["source_sha256"]}


def _answer_separator(tok) -> int:
  ids = tok.encode(tasks_lib.ANSWER_SEPARATOR)
  _check(len(ids) == 1, f"data.answer_only: the tokenizer splits the answer separator "
         f"{tasks_lib.ANSWER_SEPARATOR!r} into {len(ids)} tokens")
  return ids[0]


def build_data(data_cfg: ml_collections.ConfigDict, seq_len: int, global_batch: int,
               seed: int, *, process_index: int | None = None,
               process_count: int | None = None) -> DataBundle:
  """Builds the tokenizer and the train/valid loaders described by `data_cfg`.

  Args:
    data_cfg: the `data` config section (see `default_data_config`).
    seq_len: tokens per row.
    global_batch: rows per step over all processes.
    seed: data seed (batch offsets; task example generation).
    process_index, process_count: this host's shard; default to JAX's.
  """
  validate_data_config(data_cfg)
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  tok = get_tokenizer(data_cfg.tokenizer)
  roles = {"train": None, "valid": None}
  if data_cfg.source == "stdlib":
    train, valid, info = _stdlib_tokens(data_cfg, tok)
  elif data_cfg.source == "tasks":
    train, valid, info = _task_tokens(data_cfg, tok, seed, seq_len)
  elif data_cfg.source == "text":
    train, valid, info = _text_tokens(data_cfg, tok)
  elif data_cfg.source == "sft":
    (train, roles["train"]), (valid, roles["valid"]), info = sft_lib.sft_splits(
        data_cfg.path, data_cfg.tokenizer, tok, seq_len, data_cfg.valid_fraction)
  else:
    train, valid, info = _tensorstore_tokens(data_cfg, tok)
  by_separator = data_cfg.answer_only and data_cfg.source == "tasks"
  kw = dict(eos_id=tok.eos_id, process_index=process_index, process_count=process_count,
            row_aligned=data_cfg.answer_only,
            answer_sep_id=_answer_separator(tok) if by_separator else None)
  # Only what decides the token streams enters, so unused config keys do not perturb it.
  record = {"source": data_cfg.source, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
            "valid_fraction": data_cfg.valid_fraction, "content": info}
  fingerprint = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
  for split, tokens in (("train", train), ("valid", valid)):
    _check(tokens.shape[0] >= seq_len,
           f"data: the {split} split holds {tokens.shape[0]} tokens, fewer than seq_len="
           f"{seq_len}; raise data.max_docs, data.valid_fraction or data.num_task_examples")
  return DataBundle(tokenizer=tok,
                    train=TokenLoader(train, seq_len, global_batch, seed, roles=roles["train"],
                                      **kw),
                    valid=TokenLoader(valid, seq_len, global_batch, seed, roles=roles["valid"],
                                      **kw),
                    fingerprint=fingerprint)
