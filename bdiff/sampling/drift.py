"""Drift of a cache mode: how far its tokens are from the exact reference under the same RNG.

An approximate cache (Fast-dLLM v1's ``prefix`` / ``dual``: Wu et al., arXiv 2505.22618,
NVlabs/Fast-dLLM) trades exactness for fewer recomputed positions. Its *drift* is the
fraction of generated tokens that differ from the no-cache reference (``sample.cache="none"``,
which recomputes every position every step) decoded from the same prompts, row ids and RNG
key. Exact modes (``"exact"`` for block-causal models, ``"none"``) have drift 0 by
construction, which the sampler's tests check; approximate ones are measured, never assumed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from bdiff.sampling import config as config_lib
from bdiff.sampling import generate as gen


def reference_config(config: gen.SamplerConfig) -> gen.SamplerConfig:
  """The same sampler with every position recomputed every step (``cache="none"``).

  The caches' own knobs go back to their defaults: the reference reads none of them, and
  equal references of different modes then share one compiled loop."""
  knobs = {f.name: f.default for f in dataclasses.fields(config)
           if f.name in config_lib.MODE_KNOBS}
  return dataclasses.replace(config, cache="none", cache_refresh=0, **knobs)


def token_drift(tokens: np.ndarray, ref_tokens: np.ndarray) -> float:
  """Fraction of generated slots (where either run produced a token) whose tokens differ.

  A slot one run filled and the other left empty (one stopped earlier) counts as different.
  """
  tokens, ref_tokens = np.asarray(tokens), np.asarray(ref_tokens)
  used = (tokens != gen.NO_TOKEN) | (ref_tokens != gen.NO_TOKEN)
  return float(((tokens != ref_tokens) & used).sum() / max(int(used.sum()), 1))


def measure_drift(params, prompts, rng, config: gen.SamplerConfig, lengths=None,
                  row_ids=None) -> dict:
  """Decode with ``config`` and with its reference; report drift and the work each did.

  Returns:
    ``drift`` (float in [0, 1]), ``positions`` / ``ref_positions`` and ``forwards`` /
    ``ref_forwards`` (totals over the batch), ``cache`` (the mode's name), and the two output
    dicts as numpy arrays under ``out`` and ``ref``.
  """
  out, ref = (
      {k: np.asarray(v) for k, v in gen.generate(params, prompts, rng, c, lengths,
                                                 row_ids).items()}
      for c in (config, reference_config(config)))
  forwards = lambda o: int((o["nfe_denoise"] + o["nfe_commit"]).sum())  # noqa: E731
  return dict(drift=token_drift(out["tokens"], ref["tokens"]), cache=config.cache_mode,
              positions=int(out["positions_computed"].sum()),
              ref_positions=int(ref["positions_computed"].sum()),
              forwards=forwards(out), ref_forwards=forwards(ref), out=out, ref=ref)
