"""The strategy types every decoding module shares: knobs, per-step inputs, registry entries.

A leaf module (it imports nothing from bdiff) so that the rule modules
(``strategies_adaptive``, ``strategies_scheduled``) and the registry (``strategies``) can all
name these types without importing each other.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

# Sentinel of the knobs whose default is the strategy's reference convention.
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
  """All knobs of every strategy.

  Frozen and hashable: pass it as a static ``jit`` argument (every knob baked in), or as an
  ordinary argument: it is a pytree whose ``SWEEPABLE`` float knobs are leaves (traced, no
  recompilation when they change) and whose other fields are static metadata. Validate with
  ``validate_strategy_config`` before tracing. Field names match the ``sample`` config section.
  Four knobs default to ``AUTO`` / ``None`` = the convention of the strategy's reference code,
  taken from its registry entry (``Strategy``): ``strict``, ``confidence_from``,
  ``nucleus_mode`` and ``filter_order``;
  ``strategies.resolve`` fills them in. The numeric defaults are bdiff's; each strategy's
  docstring lists its reference values.
  """
  name: str = "threshold"
  # Proposal and score.
  temperature: float = 0.0             # 0 = argmax, except strategies whose reference always
                                       # samples (first_hitting, ancestral: 0 means T = 1)
  top_k: int = 0
  top_p: float = 1.0
  nucleus_mode: str = AUTO             # "n1" crossing token kept, "n2" dropped (BD3-LM)
  filter_order: str = AUTO             # "k_then_p" (SDAR) or "p_then_k" (Dream/NBDiff)
  confidence: str = "prob"             # prob | margin | neg_entropy | random
  confidence_from: str = AUTO          # "raw" softmax or the "sampling" distribution
  suppress_ids: tuple[int, ...] = ()   # proposals of these ids get confidence -inf (LLaDA EOS/EoT)
  # Schedules.
  steps: int = 0                       # denoising steps per block; 0 = block capacity L
  k: int = 1                           # tokens per step (fixed_k)
  # Threshold family.
  threshold: float = 0.9
  strict: bool | None = None           # None = the reference's comparison for the strategy
  factor: float = 1.0
  factor_quirk: bool = False           # Fast-dLLM reference: commit all when only the last fails
  gamma: float = 0.35                  # entropy budget (EB-sampler / SDAR)
  relaxed_threshold: float = 0.75      # LocalLeap
  radius: int = 4                      # LocalLeap
  threshold_low: float = 0.6           # BACD clip range
  threshold_high: float = 0.9
  prophet_gaps: tuple[float, ...] = (7.5, 5.0, 2.5)
  prophet_bounds: tuple[float, ...] = (0.33, 0.67)
  # Candidate restriction.
  sub_block: int = 0                   # Fast-dLLM v2 / NBDiff sub-block size (0 = off)
  window: int = 0                      # DCD initial window W0 in masks (0 = off)
  max_window: int = 0                  # DCD max window span in positions (0 = unbounded)
  # Ancestral.
  time_grid: str = "linear"            # "linear" or MD4 "cosine"
  allow_idle: bool = False             # ancestral / dream: steps may commit nothing
  # AdaBlock's block-length rule: read only by strategies.adablock_block_length, which the
  # full-attention loop calls at each block's first step.
  block_length: int = 32               # B0
  lookahead: int = 0                   # floor(0.25 * G); 0 = the whole window
  delimiter_ids: tuple[int, ...] = ()
  delimiter_threshold: float = 0.3

  @classmethod
  def from_mapping(cls, cfg: Mapping[str, Any]) -> StrategyConfig:
    """Builds from a ``sample`` config section (key ``strategy`` -> ``name``).

    Keys that are not strategy knobs (prompt lengths, batch size, ...) are ignored.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    items = dict(cfg.items())
    if "strategy" in items:
      items["name"] = items.pop("strategy")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in items.items() if k in names}
    return cls(**kw)


# Numeric knobs that only enter jnp arithmetic: pytree leaves, so a sweep over them (e.g.
# ParallelBench's τ and f grids) reuses one compiled loop when cfg is passed as a traced
# argument. Every other field shapes the computation and is static pytree metadata.
SWEEPABLE = ("threshold", "factor", "gamma", "relaxed_threshold", "threshold_low",
             "threshold_high", "delimiter_threshold")
jax.tree_util.register_dataclass(
    StrategyConfig, data_fields=list(SWEEPABLE),
    meta_fields=[f.name for f in dataclasses.fields(StrategyConfig) if f.name not in SWEEPABLE])


class StepInputs(NamedTuple):
  """What a rule sees at one step (built once by ``select``)."""
  logits: jax.Array    # [b, L, V] raw logits
  filtered: jax.Array  # [b, L, V] tempered + filtered logits (sampling distribution)
  probs: jax.Array     # [b, L, V] distribution scores are taken from (confidence_from)
  tokens: jax.Array    # [b, L] int32 proposals x̂
  score: jax.Array     # [b, L] float32 confidence c (cfg.confidence)
  cand: jax.Array      # [b, L] bool candidates after sub-block / window restriction
  keys: jax.Array      # [b] per-row keys
  step: jax.Array      # [b] int32 step in block


@dataclasses.dataclass(frozen=True)
class Strategy:
  """Registry entry: ``rule(cfg, inputs, state) -> (commit, tokens, state)`` and the
  conventions of the strategy's reference code, used where the config says ``AUTO``."""
  rule: Callable[..., tuple[jax.Array, jax.Array, dict]]
  init: Callable[[StrategyConfig, int, int], dict]
  scheduled: bool      # follows a per-block step budget cfg.steps
  strict: bool = False  # threshold comparison: True ">", False ">=" (cfg.strict None -> this)
  confidence_from: str = "raw"  # distribution scores are read from (cfg AUTO -> this)
  nucleus_mode: str = "n1"      # top-p convention (cfg AUTO -> this)
  filter_order: str = "k_then_p"  # top-k / top-p order (cfg AUTO -> this)
  always_samples: bool = False  # the reference has no greedy mode: temperature 0 means T = 1
  greedy: bool = False          # argmax-only variant of a sampling reference (temperature 0)
  needs: tuple[str, ...] = ()  # knobs that must be set (validated > 0 / non-empty)


def resolve_knobs(cfg: StrategyConfig, entry: Strategy) -> StrategyConfig:
  """``cfg`` with its reference-convention knobs filled in from the registry ``entry``."""
  return dataclasses.replace(
      cfg,
      strict=entry.strict if cfg.strict is None else cfg.strict,
      confidence_from=(entry.confidence_from if cfg.confidence_from == AUTO
                       else cfg.confidence_from),
      nucleus_mode=entry.nucleus_mode if cfg.nucleus_mode == AUTO else cfg.nucleus_mode,
      filter_order=entry.filter_order if cfg.filter_order == AUTO else cfg.filter_order,
      temperature=1.0 if entry.always_samples and cfg.temperature == 0 else cfg.temperature)
