"""A trained run, ready for inference: restore it, then sample text in, text out (``bdiff sample``).

This is the run level: it sits above ``bdiff.train`` (checkpoints, model state) and
``bdiff.sampling`` (the compiled loop) and is what ``bdiff.eval`` and the CLI build on.
:func:`restore_params` loads the params of a run (EMA when present).

:class:`Sampler` wraps :func:`generate.generate` for host-side use: it encodes prompts in the
layout the run was trained with (``sample.prompt_prefix="auto"``) and within the trained
context (longer prompts keep their last ``sample.max_prompt_len`` or ``train.seq_len`` tokens,
with a warning), packs them into fixed-shape batches (one compile serves every full batch; a
last or only batch is padded to a power of two, not to ``sample.batch_size``), keys each
prompt's RNG by its index in the input (a prompt's output does not depend on how the input is
batched), splits batches over the mesh's data axes when they divide evenly, and times each
batch with compilation excluded (compile time is recorded apart).

Chat mode (``sample.chat``, ``bdiff sample --chat``) renders each prompt with the checkpoint's
own chat template (a text as one user turn, or a list of messages) with the generation prompt,
as ``transformers``' ``apply_chat_template`` does, and also stops at the template's end-of-turn
tokens (:func:`bdiff.data.chat.end_of_turn_ids`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from typing import Any, Sequence

import jax
import numpy as np
import tqdm

from bdiff import config as config_lib
from bdiff import data as data_lib
from bdiff import distributed
from bdiff import sharding as sharding_lib
from bdiff.data import chat as chat_lib
from bdiff.sampling import config as sample_config
from bdiff.sampling import generate as gen
from bdiff.train import checkpointing
from bdiff.train import state as state_lib

log = logging.getLogger("bdiff")


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def padded_batch(n: int, batch_size: int, shards: int = 1) -> int:
  """Rows to compile for a batch of ``n`` prompts: ``batch_size`` when full, else less.

  A short (last or only) batch is padded to the next power of two, rounded up to the mesh's
  batch shards and capped at ``batch_size``: never more rows than the work needs (within 2x),
  and few distinct shapes (compiles) however many prompts a call brings.
  """
  if n >= batch_size:
    return batch_size
  return min(batch_size, _round_up(1 << max(n - 1, 0).bit_length(), shards))


def run_config(workdir: str):
  """The config a run's latest checkpoint was saved with."""
  return config_lib.from_dict(checkpointing.read_meta(workdir)["config"])


def restore_params(workdir: str, cfg=None, *, mesh=None, use_ema: bool = True):
  """Load a run for inference: (config, params, tokenizer), EMA weights when present.

  ``cfg`` defaults to the config saved in the checkpoint; pass one to apply overrides (for
  example ``sample.*``). Only the params subtree is read (never the optimizer moments), and
  strictly: the saved params must match the model's keys, shapes and dtypes exactly.
  """
  cfg = run_config(workdir) if cfg is None else cfg
  mesh = sharding_lib.make_mesh(cfg.mesh) if mesh is None else mesh
  _, _, abstract, shardings = state_lib.build(cfg, mesh)
  # A converted checkpoint holds params alone, even when EMA is configured for training.
  ema = use_ema and abstract.ema_params is not None
  name = "ema_params" if ema and "ema_params" in checkpointing.saved_items(workdir) else "params"
  params = checkpointing.restore_subtree(workdir, name, getattr(abstract, name),
                                         getattr(shardings, name))
  return cfg, params, data_lib.get_tokenizer(cfg.data.tokenizer)


@dataclasses.dataclass
class Sampler:
  """A trained model ready to sample: ``Sampler.from_run(workdir).sample(["text", ...])``."""
  cfg: Any
  params: Any
  tokenizer: Any
  use_mesh: bool = True
  config: gen.SamplerConfig = dataclasses.field(init=False)
  compile_seconds: float = dataclasses.field(init=False, default=0.0)

  def __post_init__(self):
    sample_config.validate_run_sample_config(self.cfg)
    self.config = gen.SamplerConfig.from_config(self.cfg, eos_id=self.tokenizer.eos_id)
    self.template = None
    if self.cfg.sample.chat:
      self._use_chat_template()
    self.prompt_prefix = sample_config.prompt_prefix(self.cfg)
    self.max_prompt_len = sample_config.prompt_limit(self.cfg)
    self._compiled: dict[tuple[int, int], Any] = {}
    self._mesh = sharding_lib.make_mesh(self.cfg.mesh) if self.use_mesh else None

  def _use_chat_template(self) -> None:
    """Load the run's chat template (an error names the file) and stop at its turn ends."""
    path = self.cfg.data.tokenizer
    self.template = chat_lib.template_for_tokenizer(path, required=True)
    if self.config.stop_ids:  # sample.stop_at_eos
      ends = chat_lib.end_of_turn_ids(self.template, self.tokenizer, path)
      self.config = dataclasses.replace(
          self.config, stop_ids=tuple(dict.fromkeys(self.config.stop_ids + ends)))

  def prompt_text(self, prompt: str | Sequence[dict]) -> str:
    """What is encoded for ``prompt``: in chat mode the rendered conversation (a text is one
    user message) with the generation prompt; otherwise the text itself."""
    if self.template is None:
      if not isinstance(prompt, str):
        raise ValueError("a prompt given as messages needs chat mode (sample.chat=True, "
                         "bdiff sample --chat)")
      return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return self.template.render(messages, add_generation_prompt=True)

  @classmethod
  def from_run(cls, workdir: str, cfg=None) -> Sampler:
    """Restore a run's params (EMA when present); ``cfg`` overrides its saved config."""
    cfg, params, tokenizer = restore_params(workdir, cfg)
    return cls(cfg, params, tokenizer)

  @property
  def compiled_shapes(self) -> list[tuple[int, int]]:
    """The ``(batch, prompt width)`` shapes compiled so far."""
    return sorted(self._compiled)

  def encode(self, text: str) -> np.ndarray:
    """Prompt tokens: the prefix token, then the text; its last tokens if over the limit."""
    ids, full = self._encode(text)
    if full > len(ids):
      warnings.warn(self._truncation_message(1, 1, full), stacklevel=2)
    return ids

  def _encode(self, text: str) -> tuple[np.ndarray, int]:
    """``(tokens within the limit, untruncated length)``."""
    prefix = sample_config.prefix_ids(self.prompt_prefix, self.tokenizer)
    ids = np.asarray(prefix + list(self.tokenizer.encode(self.prompt_text(text))), np.int32)
    if not len(ids):
      raise ValueError(f"empty prompt: the run's prompt layout has no prefix token "
                       f"(sample.prompt_prefix={self.cfg.sample.prompt_prefix!r} -> "
                       f"{self.prompt_prefix!r}); set sample.prompt_prefix to 'bos' or 'eos' "
                       "to sample from nothing")
    return ids[-self.max_prompt_len:], len(ids)

  def _truncation_message(self, count: int, total: int, longest: int) -> str:
    source = ("sample.max_prompt_len" if self.cfg.sample.max_prompt_len
              else "train.seq_len, the trained context")
    return (f"{count} of {total} prompts (up to {longest} tokens) exceed the prompt limit of "
            f"{self.max_prompt_len} tokens ({source}) and were truncated to their last "
            f"{self.max_prompt_len} tokens; set sample.max_prompt_len to change the limit")

  def decode(self, tokens: Sequence[int]) -> str:
    """Text of generated tokens, stop tokens dropped."""
    return self.tokenizer.decode([t for t in tokens if t not in self.config.stop_ids])

  def _batch_shards(self) -> int:
    return self._mesh.shape["data"] * self._mesh.shape["fsdp"] if self._mesh else 1

  def _sharded(self, batch: int) -> bool:
    shards = self._batch_shards()
    return self._mesh is not None and shards > 1 and batch % shards == 0

  def _jit(self, batch: int):
    """The sampler, rows split over the mesh (params kept in their own shardings) when the
    batch divides; multi-host sampling has no other way to use the other hosts' devices."""
    if self._sharded(batch):
      rep, devices = sharding_lib.replicated(self._mesh), set(self._mesh.devices.flat)
      params = jax.tree.map(  # arrays already on the mesh (FSDP shards) stay where they are
          lambda a: a.sharding if getattr(a, "sharding", rep).device_set == devices else rep,
          self.params)
      return gen.make_sharded_generate(self.config, self._mesh, params)
    if jax.process_count() > 1:
      raise ValueError(
          f"multi-host sampling splits each batch over the mesh's {self._batch_shards()} batch "
          f"shards (mesh data x fsdp): sample.batch_size (and eval.batch_size) must be a "
          f"multiple of it, got a batch of {batch}")
    return jax.jit(lambda p, x, r, n, u: gen.generate_fn(p, x, r, n, u, config=self.config))

  def _args(self, x: np.ndarray, rng, lengths: np.ndarray, ids: np.ndarray) -> tuple:
    """The sampler's arguments; rows as arrays over the mesh when sharded (every process
    holds all prompts and places the rows its devices decode)."""
    if not self._sharded(len(x)):
      return self.params, x, rng, lengths, ids
    rows = sharding_lib.batch_sharding(self._mesh)
    put = lambda a: distributed.global_array(a, rows)  # noqa: E731
    return self.params, put(x), rng, put(lengths), put(ids)

  def _fn(self, batch: int, width: int):
    """The compiled sampler for one batch shape (compiled once; time kept apart)."""
    key = (batch, width)
    if key not in self._compiled:
      fn = self._jit(batch)
      args = self._args(np.zeros((batch, width), np.int32), jax.random.key(0),
                        np.ones((batch,), np.int32), np.arange(batch, dtype=np.int32))
      start = time.perf_counter()
      self._compiled[key] = fn.lower(*args).compile()
      jax.block_until_ready(self._compiled[key](*args))  # first-run setup is not decode time
      self.compile_seconds += time.perf_counter() - start
    return self._compiled[key]

  def generate_batch(self, prompts: Sequence[np.ndarray], row_ids: Sequence[int],
                     batch_size: int, width: int) -> tuple[dict, float]:
    """One fixed-shape batch (padded with 1-token rows); returns numpy outputs and seconds."""
    n = len(prompts)
    x = np.zeros((batch_size, width), np.int32)
    lengths = np.ones((batch_size,), np.int32)
    # Padding rows continue the id range: their outputs are dropped anyway.
    ids = np.arange(batch_size, dtype=np.int32) + (row_ids[0] if len(row_ids) else 0)
    for i, (p, rid) in enumerate(zip(prompts, row_ids)):
      x[i, :len(p)], lengths[i], ids[i] = p, len(p), rid
    fn = self._fn(batch_size, width)
    args = self._args(x, jax.random.key(self.cfg.sample.seed), lengths, ids)
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    seconds = time.perf_counter() - start
    out = {k: distributed.host_array(v) for k, v in sorted(out.items())}  # same order everywhere
    return {k: v[:n] if np.ndim(v) else v for k, v in out.items()}, seconds

  def sample(self, texts: Sequence[str | Sequence[dict]], *, batch_size: int | None = None,
             first_id: int = 0, progress: bool = False) -> list[dict]:
    """Sample every prompt; returns one record per prompt, in order.

    Records hold ``prompt``, ``tokens`` (generated ids, stop token included), ``text``,
    ``num_tokens``, ``num_forwards`` (denoising + commit), ``nfe_denoise``, ``nfe_commit``,
    ``tokens_per_forward``, ``positions_computed``, ``cache`` (the ``sample.cache`` mode, so an
    approximate cache is never silent) and ``seconds`` (wall time of the batch the prompt was
    decoded in); under SparseD also ``sparse_attention`` and ``attention_density``.
    """
    batch_size = batch_size or self.cfg.sample.batch_size
    pairs = [self._encode(t) for t in texts]
    encoded = [ids for ids, _ in pairs]
    over = [full for ids, full in pairs if full > len(ids)]
    if over:
      warnings.warn(self._truncation_message(len(over), len(texts), max(over)), stacklevel=2)
    width = _round_up(max((len(p) for p in encoded), default=1), self.config.prompt_multiple)
    records = []
    starts = range(0, len(texts), batch_size)
    for lo in tqdm.tqdm(starts, desc="sample", disable=not progress):
      chunk = encoded[lo:lo + batch_size]
      ids = range(first_id + lo, first_id + lo + len(chunk))
      rows = padded_batch(len(chunk), batch_size, self._batch_shards())
      out, seconds = self.generate_batch(chunk, ids, rows, width)
      for i, text in enumerate(texts[lo:lo + batch_size]):
        records.append(self._record(text, out, i, seconds))
    return records

  def _record(self, prompt: str, out: dict, i: int, seconds: float) -> dict:
    n = int(out["num_tokens"][i])
    tokens = [int(t) for t in out["tokens"][i, :n]]
    denoise, commit = int(out["nfe_denoise"][i]), int(out["nfe_commit"][i])
    record = dict(prompt=prompt, tokens=tokens, text=self.decode(tokens), num_tokens=n,
                  num_forwards=denoise + commit, nfe_denoise=denoise, nfe_commit=commit,
                  tokens_per_forward=float(out["tokens_per_forward"][i]),
                  positions_computed=int(out["positions_computed"][i]),
                  cache=self.config.cache_mode, seconds=seconds)
    if "attention_density" in out:  # SparseD: approximate attention, never silent either
      record.update(sparse_attention=self.config.sparse_attention,
                    attention_density=float(out["attention_density"][i]))
    return record


def _chat_prompt(item, where: str) -> list[dict]:
  chat_lib.check_messages(item["messages"], f"{where}: messages")
  return item["messages"]


def read_prompts(path: str, chat: bool = False) -> list:
  """Prompts of a JSONL file with a ``"prompt"`` string per line (blank lines skipped).

  ``chat``: a line may also hold ``{"messages": [...]}``, a conversation to continue.
  """
  prompts = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                         "expected an object with a 'prompt' string") from None
      if chat and isinstance(item, dict) and "messages" in item:
        prompts.append(_chat_prompt(item, f"{path}:{lineno}"))
        continue
      if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        expected = "a 'prompt' string" + (" or a 'messages' list" if chat else "")
        raise ValueError(f"{path}:{lineno}: expected an object with {expected}")
      prompts.append(item["prompt"])
  return prompts


def sample_file(cfg, workdir: str, prompts_path: str, out_path: str) -> list[dict]:
  """``bdiff sample``: one JSON object per prompt of ``prompts_path``, in order, to ``out_path``."""
  # a bad file (or, in chat mode, a missing template) fails before the model is restored
  cfg = run_config(workdir) if cfg is None else cfg  # the run's own chat setting
  chat = bool(cfg.sample.chat)
  prompts = read_prompts(prompts_path, chat=chat)
  if chat:
    chat_lib.template_for_tokenizer(cfg.data.tokenizer, required=True)
  sampler = Sampler.from_run(workdir, cfg)
  records = sampler.sample(prompts, progress=True)
  if distributed.is_main_process():  # every process decodes (its rows); one writes
    with open(out_path, "w", encoding="utf-8") as f:
      for rec in records:
        f.write(json.dumps(rec) + "\n")
  tokens = sum(r["num_tokens"] for r in records)
  seconds = batch_seconds(records, sampler.cfg.sample.batch_size)
  log.info("sampled %d prompts, %d tokens in %.2fs (+%.2fs compile) -> %s", len(records),
           tokens, seconds, sampler.compile_seconds, out_path)
  return records


def batch_seconds(records: list[dict], batch_size: int) -> float:
  """Total decode time: every batch's seconds once (records of a batch share it)."""
  return float(sum(r["seconds"] for r in records[::batch_size]))
