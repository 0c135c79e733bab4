"""Block-diffusion sampling: one jit-compiled loop, exact KV cache, decoding strategies.

Entry points: ``bdiff.sampling.generate.generate`` (arrays in, arrays out; jit-compiled once
per shape), :func:`make_sharded_generate` (batch split over the mesh) and the ``sample`` config
section. Text in, text out for a trained run is ``bdiff.runs.Sampler``, one layer up. The
function ``generate`` is deliberately not re-exported here: it would shadow its module
``bdiff.sampling.generate``. docs/sampling.md describes the loop and its cache.
"""
from bdiff.sampling.config import (default_sample_config, validate_run_sample_config,
                                   validate_sample_config)
from bdiff.sampling.generate import NO_TOKEN, SamplerConfig, make_sharded_generate
from bdiff.sampling.strategies import STRATEGIES, StrategyConfig

__all__ = [
    "NO_TOKEN", "STRATEGIES", "SamplerConfig", "StrategyConfig",
    "default_sample_config", "make_sharded_generate", "validate_run_sample_config",
    "validate_sample_config",
]
