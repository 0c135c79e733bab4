"""The base config and its validation.

Every experiment config starts from :func:`base_config` and only overrides existing fields: the
base config is locked, so a typo (in a config file or on the command line) fails at once,
naming the key. :func:`validate` then checks values section by section before anything
compiles, each message naming the offending key.
"""
from __future__ import annotations

import json

import ml_collections

from bdiff.data import default_data_config, validate_data_config
from bdiff.diffusion import default_diffusion_config, validate_diffusion_config
from bdiff.models import default_model_config, validate_model_config
from bdiff import sharding as sharding_lib
from bdiff.sampling import default_sample_config, validate_run_sample_config

SECTIONS = ("model", "diffusion", "data", "optim", "train", "mesh", "sample", "eval")


def _optim() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=3e-4, warmup_steps=100, min_lr_ratio=0.1, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0, ema_decay=0.0))


def _train() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=1000, global_batch=16, seq_len=128, seed=0,
      log_every=10, eval_every=0, eval_batches=4, checkpoint_every=0, keep_checkpoints=2,
      # True: each document of a packed row is trained alone (own RoPE positions, own blocks,
      # attention inside it); False: a row is one window of the token stream (BD3-LM on OWT).
      mask_segments=False, progress=True))


def _mesh() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, rules=[list(r) for r in sharding_lib.DEFAULT_RULES]))


def _eval() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      tasks="copy,reverse,sort", num_examples=64, batch_size=16, seed=1234))


def base_config() -> ml_collections.ConfigDict:
  """All keys any code reads, with defaults; locked against new keys."""
  cfg = ml_collections.ConfigDict()
  cfg.name = "base"
  cfg.model = default_model_config()
  cfg.diffusion = default_diffusion_config()
  cfg.data = default_data_config()
  cfg.optim = _optim()
  cfg.train = _train()
  cfg.mesh = _mesh()
  cfg.sample = default_sample_config()
  cfg.eval = _eval()
  cfg.lock()
  return cfg


def _positive(section, keys, prefix):
  for key in keys:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      raise ValueError(f"{prefix}.{key} must be positive, got {value!r}")


def _validate_optim(cfg) -> None:
  _positive(cfg.optim, ("lr", "b1", "b2", "eps"), "optim")
  for key in ("warmup_steps", "weight_decay", "grad_clip", "min_lr_ratio"):
    if cfg.optim[key] < 0:
      raise ValueError(f"optim.{key} must be >= 0, got {cfg.optim[key]!r}")
  if not 0.0 <= cfg.optim.ema_decay < 1.0:
    raise ValueError(f"optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay!r}")


def _validate_train(cfg) -> None:
  _positive(cfg.train, ("steps", "global_batch", "seq_len", "log_every", "eval_batches"),
            "train")
  for key in ("eval_every", "checkpoint_every", "keep_checkpoints"):
    if cfg.train[key] < 0:
      raise ValueError(f"train.{key} must be >= 0, got {cfg.train[key]!r}")


def validate(cfg, mesh_shape: tuple[int, ...] | None = None) -> None:
  """Check every section; raise ValueError naming the first bad key.

  ``mesh_shape`` is the (data, fsdp, tensor) shape of an explicitly given mesh, which takes
  precedence over ``cfg.mesh``; by default the config's mesh is resolved on this host's devices.
  """
  missing = [s for s in SECTIONS if s not in cfg]
  if missing:
    raise ValueError(f"config is missing sections {missing}; start from bdiff.config.base_config()")
  validate_model_config(cfg.model)
  validate_diffusion_config(cfg.diffusion, cfg.train.seq_len)
  if cfg.diffusion.time_conditioning:
    raise ValueError("diffusion.time_conditioning=True needs a time input that "
                     "bdiff.models.Transformer does not have (BD3-LM, arXiv 2503.09573, trains "
                     "without time conditioning)")
  validate_data_config(cfg.data)
  _validate_optim(cfg)
  _validate_train(cfg)
  shape = sharding_lib.mesh_shape(cfg.mesh) if mesh_shape is None else mesh_shape
  batch_shards = shape[0] * shape[1]
  if cfg.train.global_batch % batch_shards:
    raise ValueError(f"train.global_batch={cfg.train.global_batch} must be divisible by "
                     f"mesh data*fsdp={batch_shards}")
  _validate_packing(cfg)
  validate_run_sample_config(cfg)


def _validate_packing(cfg) -> None:
  """``train.mask_segments`` trains packed documents alone; say where that cannot hold."""
  if not cfg.train.mask_segments:
    return
  if cfg.model.attention_impl == "pallas":
    raise ValueError("train.mask_segments=True (per-document blocks of packed rows) needs "
                     "model.attention_impl 'xla' or 'cudnn': the Pallas kernels' block-sparse "
                     "plan is static and cannot follow document boundaries")
  if cfg.diffusion.resample:
    raise ValueError("train.mask_segments=True cannot be combined with diffusion.resample "
                     "(its masked-count window is defined per row block)")
  if cfg.diffusion.aux_ar_weight > 0:
    raise ValueError("train.mask_segments=True cannot be combined with diffusion.aux_ar_weight "
                     "> 0 (its next-token pairs would cross documents)")
  if cfg.data.answer_only:
    raise ValueError("train.mask_segments=True does not apply to data.answer_only rows (one "
                     "example per row, its EOS padding would become one-token documents)")


def to_dict(cfg) -> dict:
  """A JSON-able dict of the config (saved with every checkpoint and run)."""
  return json.loads(cfg.to_json())


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """Rebuild a config saved by :func:`to_dict`, on top of the base (new keys keep defaults)."""
  cfg = base_config()
  cfg.unlock()
  _merge(cfg, d, prefix="")
  cfg.lock()
  return cfg


def _merge(cfg, d: dict, prefix: str) -> None:
  for key, value in d.items():
    if key not in cfg:
      raise ValueError(f"saved config has unknown key {prefix}{key}")
    if isinstance(value, dict) and isinstance(cfg[key], ml_collections.ConfigDict):
      _merge(cfg[key], value, prefix=f"{prefix}{key}.")
    else:
      cfg[key] = value


def parse_variant(arg: str | None, origin: str, **allowed: tuple) -> dict:
  """Parse ``configs/x.py:key=value,key=value`` variants (big_vision style).

  Args:
    arg: the text after the colon, or None.
    origin: the config file, for error messages.
    **allowed: key -> tuple of accepted values (ints are parsed as ints); an empty tuple
      accepts any int.

  Returns:
    {key: value} for the keys given.
  """
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, raw = item.partition("=")
    if key not in allowed:
      raise ValueError(f"{origin}: unknown variant key {key!r} (known: {sorted(allowed)})")
    try:
      value = int(raw)
    except ValueError:
      value = raw
    if not allowed[key] and not isinstance(value, int):
      raise ValueError(f"{origin}: variant {key} must be an integer, got {raw!r}")
    if allowed[key] and value not in allowed[key]:
      raise ValueError(f"{origin}: variant {key} must be one of {allowed[key]}, got {raw!r}")
    out[key] = value
  return out
