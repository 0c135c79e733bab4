"""The ``sample`` config section: sampler loop settings and every decoding strategy's knobs.

Loop keys are read by ``generate.py`` / ``bdiff.runs``; strategy keys mirror the fields of
``types.StrategyConfig`` one to one (``strategy`` is its ``name``), so each knob can be set
with ``--config.sample.KEY=VALUE``. ``ConfigDict`` cannot hold ``None``, so two keys use
sentinels: ``steps=0`` (the block size) and ``strict="auto"`` (the strategy's reference
comparison).

:func:`validate_sample_config` is the section's one validation point (``bdiff.config.validate``
and ``bdiff.runs.Sampler`` call it); the converters below it (:func:`strategy_config`,
:func:`prompt_prefix`, :func:`prompt_limit`) trust a validated section and raise nothing.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from bdiff import attention as attention_lib
from bdiff.sampling import strategies as strategies_lib

COMMIT_MODES = ("separate", "fused")
# sample.sparse_attention: "sparsed" = SparseD's per-head block-sparse patterns (sparsed.py).
SPARSE_ATTENTION = ("none", "sparsed")
# sample.cache: "auto" = "exact" for block-causal models, "none" for full-attention ones.
# Full-attention caches beyond Fast-dLLM v1 (dKV-Cache, Window-Diffusion): approx_cache.py.
LADDER_CACHES = ("dkv", "window_block")
# DCD's sliding-window cache, refreshed by decoded count (dcd_cache.py).
DCD_CACHES = ("dcd_prefix", "dcd_dual")
# Elastic-Cache: per-layer caches refreshed where attention drifts (elastic_cache.py).
ELASTIC_CACHES = ("elastic",)
# Window-Diffusion's sliding active set and dKV-Cache Greedy: cached steps query a per-step
# set of positions (query_cache.py).
QUERY_SET_CACHES = ("window", "dkv_greedy")
# FlashBlock: block-external attention cached at a block's first step, on top of the exact
# KV cache of block-causal models (flashblock.py).
FLASHBLOCK_CACHE = "flashblock"
# Full-attention approximate caches: Fast-dLLM v1 and the ladder's further rungs.
_FULL_ATTENTION_APPROX = (("prefix", "dual") + LADDER_CACHES + DCD_CACHES + ELASTIC_CACHES
                          + QUERY_SET_CACHES)
BLOCK_CAUSAL_CACHES = ("exact", "none", FLASHBLOCK_CACHE)  # exact KV cache, none, FlashBlock
FULL_ATTENTION_CACHES = ("none",) + _FULL_ATTENTION_APPROX
APPROXIMATE_CACHES = _FULL_ATTENTION_APPROX + (FLASHBLOCK_CACHE,)
CACHE_MODES = ("auto", "exact") + FULL_ATTENTION_CACHES + (FLASHBLOCK_CACHE,)
PROMPT_PREFIXES = ("auto", "none", "bos", "eos")
STRICT_CHOICES = ("auto", "true", "false")
# Strategies the block-causal loop cannot host: AdaBlock chooses each block's length at
# runtime, a block-causal model's blocks have the size it was trained with.
UNSUPPORTED_STRATEGIES = ("adablock",)
ADAPTIVE_BLOCK_CACHES = ("none", "prefix", "dual")  # caches that follow AdaBlock's block end
# The knobs only some caches read. Set off its default under another mode, a knob would be
# ignored without a word, so validation refuses it.
MODE_KNOBS = {"window_tokens": ("window",), "active_tokens": ("window",),
              "dkv_window_size": ("dkv_greedy",), "cache_gamma": ELASTIC_CACHES,
              "cache_track": ELASTIC_CACHES, "cache_delay": DCD_CACHES}

_LOOP_DEFAULTS = dict(
    max_new_tokens=64,
    block_size=0,            # decoding block. Block-causal models: 0 = the model's
                             # diffusion.block_size (the only legal value). Full-attention
                             # models (model.attention="bidirectional"): any length (LLaDA's
                             # semi-AR blocks); 0 = one block, the whole generation
    cache="auto",            # auto | exact | none | flashblock (block-causal) | prefix | dual |
                             # dkv | window_block | dcd_prefix | dcd_dual | elastic | window |
                             # dkv_greedy (full attention); CACHE_MODES. auto = exact for
                             # block-causal models, none for full-attention ones
    cache_refresh=0,         # approximate caches: also recompute the cache every k steps inside
                             # a block (0 = only at block starts, Fast-dLLM v1; 1 = every step;
                             # dkv: its cache_reloading_step; window_block: its refresh_cycle)
    window_tokens=64,        # window: keys of a phase = decoded tokens + the first this many
                             # masks (Window-Diffusion's window_tokens; its LLaDA README: 64)
    active_tokens=16,        # window: queries = the first this many masks (+ tokens decoded in
                             # the phase; Window-Diffusion's active_tokens, LLaDA README: 16)
    dkv_window_size=4,       # dkv_greedy: still-masked neighbours queried per position to
                             # decode (dKV-Cache Greedy's window_size; its example: 4)
    cache_delay=0,           # dcd_prefix/dcd_dual: recompute w positions left of the window
                             # once more (DCD's prefix-delay{w} / dual-delay{w}; its scripts: 2)
    cache_gamma=0.9,         # elastic: attention similarity below which the layers after the
                             # tested one are recomputed everywhere (Elastic-Cache's gamma)
    cache_track=1,           # elastic: tokens tracked per layer for that test (its track_num);
                             # its window_length is sample.window (masks decided per step)
    use_cache=True,          # False = cache "none" (the older spelling of the same switch)
    commit="separate",       # separate: one clean re-forward per block; fused: folded into the
                             # next block's first forward (query width 2 * block_size)
    first_token_from_commit=False,  # token-shifted models: next block's first token = argmax
                                    # of the commit pass's last logit (Fast-dLLM v2)
    stop_at_eos=True,
    prompt_prefix="auto",    # token put before every prompt: auto | none | bos | eos; auto =
                             # what the run's training rows hold before a document's first
                             # token (see training_prompt_prefix)
    max_prompt_len=0,        # prompt limit in tokens (prefix included); 0 = the trained context
                             # train.seq_len. Longer prompts keep their last tokens, with a warning
    prefill_chunk=256,       # prompt positions per prefill forward (rounded down to whole
                             # blocks, at least one): memory grows linearly with the prompt
    sparse_attention="none",  # none | sparsed (SparseD, full-attention models, cache none)
    sparsed_skip=0.2,        # SparseD: full attention for steps t <= floor(T * skip) + 1
    sparsed_select=0.5,      # SparseD: keep floor(n_tiles * select) + 1 key tiles per query
                             # tile (its short-context setting; long context: 0.3)
    sparsed_tile=32,         # SparseD: pattern tile size (short context 32, long 128)
    seed=0,
    batch_size=16,
    chat=False,              # render each prompt with the tokenizer's chat template (as one
                             # user turn + generation prompt) and stop at its end-of-turn tokens
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


def is_full_attention(model_cfg) -> bool:
  """The model attends bidirectionally over the whole sequence (LLaDA, Dream, an MDLM)."""
  return model_cfg.get("attention", "block_causal") == "bidirectional"


def resolve_cache(mode: str, use_cache: bool, full_attention: bool) -> str:
  """``sample.cache`` with ``"auto"`` and the ``use_cache=False`` alias resolved."""
  if mode == "auto":
    return "none" if full_attention or not use_cache else "exact"
  return mode


def decode_block_size(sample_cfg, trained_block: int, full_attention: bool) -> int:
  """The decoding block: the trained one (block-causal), or ``sample.block_size`` capped at
  the generation length, 0 meaning one block for the whole generation (full attention)."""
  if not full_attention:
    return trained_block
  return min(sample_cfg.block_size or sample_cfg.max_new_tokens, sample_cfg.max_new_tokens)


def strategy_config(cfg, block_size: int) -> strategies_lib.StrategyConfig:
  """The frozen ``StrategyConfig`` of a validated ``sample`` section (sentinels resolved)."""
  scfg = strategies_lib.StrategyConfig.from_mapping(cfg)
  strict = cfg.get("strict", "auto")
  if isinstance(strict, str):
    strict = None if strict == "auto" else strict == "true"
  steps = cfg.get("steps", 0) or block_size
  return dataclasses.replace(scfg, strict=strict, steps=steps)


def training_prompt_prefix(cfg) -> str:
  """What the run's training rows hold right before a document's first token.

  * rows in the SFT layout (``data.answer_only``: tasks or SFT records) start with the
    prompt: ``"none"``;
  * packed windows separate documents with EOS (``bdiff.data`` appends one to every
    document), which the next document sees: ``"eos"``; unless ``train.mask_segments`` hides
    it (the EOS belongs to the segment it ends), when a document starts from nothing:
    ``"none"``.

  BOS never occurs in bdiff's training data, so ``"bos"`` is only ever an explicit choice.
  """
  if cfg.data.answer_only:
    return "none"
  return "none" if cfg.train.mask_segments else "eos"


def prompt_prefix(cfg) -> str:
  """``sample.prompt_prefix`` of a full config, ``"auto"`` resolved from the training layout.

  In chat mode ``"auto"`` is ``"none"``: the chat template writes the tokens a conversation
  starts with itself (Llama 3's ``{{ bos_token }}``), as ``apply_chat_template`` does.
  """
  prefix = cfg.sample.prompt_prefix
  if prefix == "auto":
    return "none" if cfg.sample.chat else training_prompt_prefix(cfg)
  return prefix


def prefix_ids(prefix: str, tokenizer) -> list[int]:
  """The token ids a resolved prompt prefix ("none", "bos" or "eos") puts before a prompt."""
  return {"none": [], "bos": [tokenizer.bos_id], "eos": [tokenizer.eos_id]}[prefix]


def prompt_limit(cfg) -> int:
  """Longest prompt in tokens: ``sample.max_prompt_len``, or the trained ``train.seq_len``."""
  return cfg.sample.max_prompt_len or cfg.train.seq_len


def prefill_chunk(cfg, block_size: int) -> int:
  """``sample.prefill_chunk`` rounded down to whole blocks (at least one block)."""
  return max(block_size, cfg.prefill_chunk // block_size * block_size)


def _check_loop(cfg) -> None:
  def positive_int(key):
    if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] <= 0:
      raise ValueError(f"sample.{key} must be a positive integer, got {cfg[key]!r}")

  for key in ("max_new_tokens", "batch_size", "prefill_chunk"):
    positive_int(key)
  for key in ("steps", "max_prompt_len", "block_size"):
    if not isinstance(cfg[key], int) or cfg[key] < 0:
      raise ValueError(f"sample.{key} must be an integer >= 0, got {cfg[key]!r}")
  if not isinstance(cfg.cache_refresh, int) or cfg.cache_refresh < 0:
    raise ValueError(f"sample.cache_refresh must be an integer >= 0, got {cfg.cache_refresh!r}")
  for key in ("use_cache", "stop_at_eos", "chat"):
    if not isinstance(cfg[key], bool):
      raise ValueError(f"sample.{key} must be a bool, got {cfg[key]!r}")
  if cfg.commit not in COMMIT_MODES:
    raise ValueError(f"sample.commit must be one of {COMMIT_MODES}, got {cfg.commit!r}")
  if cfg.prompt_prefix not in PROMPT_PREFIXES:
    raise ValueError(f"sample.prompt_prefix must be one of {PROMPT_PREFIXES}, got "
                     f"{cfg.prompt_prefix!r}")
  strict = cfg.strict
  if isinstance(strict, str) and strict not in STRICT_CHOICES:
    raise ValueError(f"sample.strict must be one of {STRICT_CHOICES}, got {strict!r}")
  if cfg.first_token_from_commit and cfg.commit != "separate":
    raise ValueError("sample.first_token_from_commit needs sample.commit='separate' (the fused "
                     "mode has no separate commit pass)")


def _check_cache(cfg, full_attention: bool) -> None:
  """``sample.cache`` names a mode this model's loop has (and ``use_cache`` agrees with it)."""
  if cfg.cache not in CACHE_MODES:
    raise ValueError(f"sample.cache must be one of {CACHE_MODES}, got {cfg.cache!r}")
  if not cfg.use_cache and cfg.cache not in ("auto", "none"):
    raise ValueError(f"sample.use_cache=False means sample.cache='none', which contradicts "
                     f"sample.cache={cfg.cache!r}; set only sample.cache")
  mode = resolve_cache(cfg.cache, cfg.use_cache, full_attention)
  allowed = FULL_ATTENTION_CACHES if full_attention else BLOCK_CAUSAL_CACHES
  if mode not in allowed:
    kind = ("a full-attention model (model.attention='bidirectional')" if full_attention
            else "a block-causal model (model.attention='block_causal')")
    raise ValueError(f"sample.cache={cfg.cache!r} is not a mode for {kind}; allowed: "
                     f"{('auto',) + allowed}")
  if cfg.cache_refresh and mode not in APPROXIMATE_CACHES:
    raise ValueError(f"sample.cache_refresh={cfg.cache_refresh} only applies to the "
                     f"approximate caches {APPROXIMATE_CACHES}, not sample.cache={mode!r}")


def _check_mode_knobs(cfg, mode: str) -> None:
  """A mode-specific knob (``MODE_KNOBS``) off its default names a mode that reads it."""
  for key, modes in MODE_KNOBS.items():
    value, default = cfg.get(key, _LOOP_DEFAULTS[key]), _LOOP_DEFAULTS[key]
    if value != default and mode not in modes:
      raise ValueError(f"sample.{key}={value!r} only applies to sample.cache in {modes}, "
                       f"not sample.cache={mode!r}, which would ignore it; leave it at its "
                       f"default {default!r}")


def _check_full_attention(cfg) -> None:
  """Keys of the block-causal loop that a full-attention model cannot honour."""
  if cfg.commit != "separate":
    raise ValueError(f"sample.commit={cfg.commit!r}: a full-attention model has no commit "
                     "pass (nothing is stored per block); leave sample.commit='separate'")
  if cfg.first_token_from_commit:
    raise ValueError("sample.first_token_from_commit needs a block-causal model's commit "
                     "pass; a full-attention model predicts every position in its forward")


def _check_block_size(cfg, block_size: int) -> None:
  if cfg.block_size not in (0, block_size):
    raise ValueError(
        f"sample.block_size={cfg.block_size} does not match the model's diffusion.block_size="
        f"{block_size}: the exact KV cache needs the trained block structure (blocks count "
        "from the sequence start); leave sample.block_size=0 to use the model's")


def _check_regime(cfg, context_causal: bool, attention_impl: str) -> None:
  """The attention regime a context-causal model needs is one the backend can express."""
  if not (context_causal and attention_impl == "pallas"):
    return
  exact = resolve_cache(cfg.cache, cfg.use_cache, False) == "exact"
  if cfg.commit == "separate" or not exact:
    key = "commit" if exact else ("use_cache" if not cfg.use_cache else "cache")
    raise ValueError(
        f"sample.{key}={cfg[key]!r}: a context-causal model (diffusion.context_causal=True) "
        "sampled this way needs a per-row attention mask (token-causal for clean rows, "
        "block-causal for noisy ones), which model.attention_impl='pallas' cannot take; use "
        "sample.commit='fused' with the cache, or model.attention_impl='xla'")


def _check_adablock(scfg, longest: int, full_attention: bool, cache: str) -> None:
  """AdaBlock runs in the full-attention loop only, its default length within the longest,
  under a cache that follows a runtime block end."""
  if scfg.name in UNSUPPORTED_STRATEGIES and not full_attention:
    raise ValueError(f"sample.strategy={scfg.name!r} chooses each block's length at runtime, "
                     "which needs a full-attention model (model.attention='bidirectional'); "
                     "a block-causal model decodes blocks of its trained diffusion.block_size")
  if scfg.name == "adablock" and scfg.block_length > longest:
    raise ValueError(f"sample.block_length={scfg.block_length} (AdaBlock's default block "
                     f"length) exceeds the longest block, sample.block_size (resolved: "
                     f"{longest}); lower it or raise sample.block_size")
  if scfg.name == "adablock" and cache not in ADAPTIVE_BLOCK_CACHES:
    raise ValueError(f"sample.cache={cache!r} keeps blocks of sample.block_size; "
                     f"sample.strategy='adablock' runs with {ADAPTIVE_BLOCK_CACHES}")


def _check_dcd_cache(cfg, scfg, mode: str) -> None:
  """DCD's cache follows the ``dcd`` strategy's window and refreshes by decoded count."""
  if not isinstance(cfg.cache_delay, int) or cfg.cache_delay < 0:
    raise ValueError(f"sample.cache_delay must be an integer >= 0, got {cfg.cache_delay!r}")
  if mode not in DCD_CACHES:
    return
  if scfg.name != "dcd":
    raise ValueError(f"sample.cache={mode!r} slides with DCD's window: it needs "
                     f"sample.strategy='dcd' (with sample.window), not {scfg.name!r}")
  if cfg.cache_refresh < 1:
    raise ValueError(f"sample.cache={mode!r} refreshes after sample.cache_refresh decoded "
                     "tokens (DCD's refresh_count: 16 by default, 32 in its LLaDA scripts); "
                     "set it >= 1")


def _check_flashblock(cfg, mode: str, attention_impl: str) -> None:
  """FlashBlock caches the attention of a block's queries over the cache, so it needs the
  separate commit pass (the fused window re-queries the previous block) and an attention
  backend that returns the log-sum-exp its merge needs."""
  if mode != FLASHBLOCK_CACHE:
    return
  if cfg.commit != "separate":
    raise ValueError(f"sample.cache='flashblock' needs sample.commit='separate', got "
                     f"{cfg.commit!r} (the fused window re-queries the previous block)")
  if attention_impl not in attention_lib.LSE_IMPLS:
    raise ValueError(f"sample.cache='flashblock' merges attention parts through their "
                     f"log-sum-exp, which model.attention_impl={attention_impl!r} does not "
                     f"return; use one of {attention_lib.LSE_IMPLS}")


def _check_sparse_attention(cfg, full_attention: bool, mode: str, attention_impl: str) -> None:
  """SparseD's knobs, and the loop that hosts it (full attention, no K/V cache)."""
  kind = cfg.get("sparse_attention", "none")
  if kind not in SPARSE_ATTENTION:
    raise ValueError(f"sample.sparse_attention must be one of {SPARSE_ATTENTION}, got "
                     f"{kind!r}")
  for key in ("sparsed_skip", "sparsed_select"):
    value = cfg.get(key, 0.5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
      raise ValueError(f"sample.{key} must be a number in [0, 1], got {value!r}")
  tile = cfg.get("sparsed_tile", 32)
  if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
    raise ValueError(f"sample.sparsed_tile must be a positive integer, got {tile!r}")
  if kind == "sparsed" and not full_attention:
    raise ValueError("sample.sparse_attention='sparsed' runs in the full-attention loop: it "
                     "needs model.attention='bidirectional'")
  if kind == "sparsed" and attention_impl == "pallas" and tile % 8:
    raise ValueError(f"sample.sparsed_tile={tile}: the block-sparse kernels' tiles are "
                     "multiples of 8 (model.attention_impl='pallas')")
  if kind == "sparsed" and mode != "none":
    raise ValueError(f"sample.sparse_attention='sparsed' recomputes the whole canvas under its "
                     f"pattern: it needs sample.cache='none' (or 'auto'), not {mode!r}")


def _check_elastic(cfg, scfg, mode: str) -> None:
  """Elastic-Cache's drift threshold and tracked tokens; it decides in a window of masks."""
  gamma, track = cfg.get("cache_gamma", 0.9), cfg.get("cache_track", 1)
  if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1e9:
    raise ValueError(f"sample.cache_gamma must be a number >= 0 (the attention similarity "
                     f"below which Elastic-Cache recomputes deeper layers; above 1: always), "
                     f"got {gamma!r}")
  if isinstance(track, bool) or not isinstance(track, int) or track < 1:
    raise ValueError(f"sample.cache_track must be an integer >= 1, got {track!r}")
  if mode in ELASTIC_CACHES and scfg.window < 1:
    raise ValueError("sample.cache='elastic' decides in a sliding window of the first "
                     "sample.window masks (Elastic-Cache's window_length, 16 in its "
                     "scripts); set sample.window >= 1")


def _check_query_cache(cfg, scfg, mode: str) -> None:
  """Window-Diffusion's window sizes; dKV-Cache Greedy needs LLaDA's random remasking."""
  for key, low in (("window_tokens", 1), ("active_tokens", 1), ("dkv_window_size", 0)):
    value = cfg.get(key, low)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"sample.{key} must be an integer >= {low}, got {value!r}")
  if mode != "dkv_greedy":
    return
  if scfg.name != "static" or scfg.confidence != "random":
    raise ValueError(f"sample.cache='dkv_greedy' knows each step's positions before its "
                     "forward, which needs LLaDA's random remasking: sample.strategy='static' "
                     f"with sample.confidence='random', not sample.strategy={scfg.name!r} "
                     f"with sample.confidence={scfg.confidence!r}")
  if scfg.suppress_ids:
    raise ValueError("sample.suppress_ids makes a step's positions depend on its proposals, "
                     "which sample.cache='dkv_greedy' must know before the forward; leave it "
                     "empty")


def validate_sample_config(cfg, block_size: int, token_shift: bool | None = None, *,
                           context_causal: bool = False, attention_impl: str = "xla",
                           full_attention: bool = False) -> None:
  """Raise ValueError naming the offending ``sample.*`` key.

  Args:
    cfg: the ``sample`` section.
    block_size: the model's trained ``diffusion.block_size``.
    token_shift: the model's ``diffusion.token_shift`` (None = unknown, not checked).
    context_causal: the model's ``diffusion.context_causal``.
    attention_impl: the model's ``model.attention_impl``.
    full_attention: the model attends bidirectionally (``model.attention="bidirectional"``).
  """
  _check_loop(cfg)
  _check_cache(cfg, full_attention)
  if full_attention:
    _check_full_attention(cfg)
  else:
    _check_block_size(cfg, block_size)
  scfg = strategy_config(cfg, decode_block_size(cfg, block_size, full_attention))
  strategies_lib.validate_strategy_config(scfg, prefix="sample")
  mode = resolve_cache(cfg.cache, cfg.use_cache, full_attention)
  _check_adablock(scfg, decode_block_size(cfg, block_size, full_attention), full_attention,
                  mode)
  _check_dcd_cache(cfg, scfg, mode)
  _check_query_cache(cfg, scfg, mode)
  _check_sparse_attention(cfg, full_attention, mode, attention_impl)
  _check_flashblock(cfg, mode, attention_impl)
  _check_elastic(cfg, scfg, mode)
  _check_mode_knobs(cfg, mode)
  if token_shift is False and cfg.first_token_from_commit:
    raise ValueError("sample.first_token_from_commit is only meaningful for token-shifted "
                     "models (diffusion.token_shift=True)")
  if not full_attention:
    _check_regime(cfg, context_causal, attention_impl)


def validate_run_sample_config(cfg) -> None:
  """:func:`validate_sample_config` of a full config (its model and diffusion sections)."""
  validate_sample_config(cfg.sample, cfg.diffusion.block_size, cfg.diffusion.token_shift,
                         context_causal=cfg.diffusion.context_causal,
                         attention_impl=cfg.model.attention_impl,
                         full_attention=is_full_attention(cfg.model))
