"""The ``sample`` config section: sampler loop settings and every decoding strategy's knobs.

Loop keys are read by ``generate.py`` / ``run.py``; strategy keys mirror the fields of
``types.StrategyConfig`` one to one (``strategy`` is its ``name``), so each knob can be set
with ``--config.sample.KEY=VALUE``. ``ConfigDict`` cannot hold ``None``, so two keys use
sentinels: ``steps=0`` (the block size) and ``strict="auto"`` (the strategy's reference
comparison).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from bdiff.sampling import strategies as strategies_lib

COMMIT_MODES = ("separate", "fused")
PROMPT_PREFIXES = ("none", "bos", "eos")
STRICT_CHOICES = ("auto", "true", "false")
# Strategies whose rule the fixed-block exact loop cannot host (see generate.py).
UNSUPPORTED_STRATEGIES = ("adablock",)

_LOOP_DEFAULTS = dict(
    max_new_tokens=64,
    block_size=0,            # 0 = the model's diffusion.block_size (the only legal value)
    use_cache=True,          # False = no-cache reference: full block-causal recompute per step
    commit="separate",       # separate: one clean re-forward per block; fused: folded into the
                             # next block's first forward (query width 2 * block_size)
    first_token_from_commit=False,  # token-shifted models: next block's first token = argmax
                                    # of the commit pass's last logit (Fast-dLLM v2)
    stop_at_eos=True,
    prompt_prefix="eos",     # token put before every prompt: none | bos | eos (bdiff's packed
                             # training data separates documents with EOS)
    max_prompt_len=0,        # 0 = no limit; longer prompts keep their last tokens
    seed=0,
    batch_size=16,
)


def _strategy_defaults() -> dict:
  out = {}
  for field in dataclasses.fields(strategies_lib.StrategyConfig):
    value = field.default
    key = "strategy" if field.name == "name" else field.name
    out[key] = value
  out["steps"] = 0
  out["strict"] = "auto"
  return out


def default_sample_config() -> ml_collections.ConfigDict:
  """Defaults of the ``sample`` section (loop keys + every ``StrategyConfig`` field)."""
  return ml_collections.ConfigDict({**_strategy_defaults(), **_LOOP_DEFAULTS})


def resolve_block_size(cfg, block_size: int) -> int:
  """The sampler's block size: ``sample.block_size`` if set, which must match the model's."""
  bs = cfg.get("block_size", 0)
  if bs not in (0, block_size):
    raise ValueError(
        f"sample.block_size={bs} does not match the model's diffusion.block_size="
        f"{block_size}: the exact KV cache needs the trained block structure (blocks count "
        "from the sequence start); leave sample.block_size=0 to use the model's")
  return block_size


def strategy_config(cfg, block_size: int) -> strategies_lib.StrategyConfig:
  """The frozen ``StrategyConfig`` of a ``sample`` section (sentinels resolved)."""
  scfg = strategies_lib.StrategyConfig.from_mapping(cfg)
  strict = cfg.get("strict", "auto")
  if isinstance(strict, str):
    if strict not in STRICT_CHOICES:
      raise ValueError(f"sample.strict must be one of {STRICT_CHOICES}, got {strict!r}")
    strict = None if strict == "auto" else strict == "true"
  steps = cfg.get("steps", 0) or block_size
  return dataclasses.replace(scfg, strict=strict, steps=steps)


def _check_loop(cfg) -> None:
  def positive_int(key):
    if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] <= 0:
      raise ValueError(f"sample.{key} must be a positive integer, got {cfg[key]!r}")

  for key in ("max_new_tokens", "batch_size"):
    positive_int(key)
  for key in ("steps", "max_prompt_len", "block_size"):
    if not isinstance(cfg[key], int) or cfg[key] < 0:
      raise ValueError(f"sample.{key} must be an integer >= 0, got {cfg[key]!r}")
  if cfg.commit not in COMMIT_MODES:
    raise ValueError(f"sample.commit must be one of {COMMIT_MODES}, got {cfg.commit!r}")
  if cfg.prompt_prefix not in PROMPT_PREFIXES:
    raise ValueError(f"sample.prompt_prefix must be one of {PROMPT_PREFIXES}, got "
                     f"{cfg.prompt_prefix!r}")
  if cfg.first_token_from_commit and cfg.commit != "separate":
    raise ValueError("sample.first_token_from_commit needs sample.commit='separate' (the fused "
                     "mode has no separate commit pass)")


def validate_sample_config(cfg, block_size: int, token_shift: bool | None = None) -> None:
  """Raise ValueError naming the offending ``sample.*`` key.

  Args:
    cfg: the ``sample`` section.
    block_size: the model's trained ``diffusion.block_size``.
    token_shift: the model's ``diffusion.token_shift`` (None = unknown, not checked).
  """
  _check_loop(cfg)
  bs = resolve_block_size(cfg, block_size)
  scfg = strategy_config(cfg, bs)
  strategies_lib.validate_strategy_config(scfg, prefix="sample")
  if scfg.name in UNSUPPORTED_STRATEGIES:
    raise ValueError(f"sample.strategy={scfg.name!r} needs variable-length blocks, which the "
                     "fixed-block exact-cache loop does not host")
  if token_shift is False and cfg.first_token_from_commit:
    raise ValueError("sample.first_token_from_commit is only meaningful for token-shifted "
                     "models (diffusion.token_shift=True)")
