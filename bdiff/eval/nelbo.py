"""Held-out NELBO of a trained run over several independent Monte Carlo draws.

The NELBO of a masked/block diffusion model is an expectation over diffusion times and masks
(BD3-LM, Arriola et al., arXiv 2503.09573; MDLM, Sahoo et al., arXiv 2406.07524); one pass
over the held-out batches is one Monte Carlo estimate of it. Comparing models on one draw
mistakes that noise for a difference, so experiments evaluate ``draws`` passes, draw ``i``
seeded with ``eval.seed + i`` (draw 0 is the one training reports), and summarise them with
``bdiff.eval.stats.mean_sd``. Models whose loss has no randomness (AR, ``t = 1``) give a zero
spread.
"""
from __future__ import annotations

import dataclasses

from bdiff import runs as run_lib
from bdiff.eval import stats
from bdiff.train import loop


def nelbo_draws(cfg, workdir: str, draws: int, *, mesh=None) -> list[dict]:
  """``draws`` held-out NELBO summaries (``Trainer.evaluate``) of the run in ``workdir``."""
  if draws < 1:
    raise ValueError(f"draws must be >= 1, got {draws}")
  trainer = loop.Trainer.build(cfg, workdir, mesh)
  _, params, _ = run_lib.restore_params(workdir, trainer.cfg, mesh=trainer.mesh)
  out = []
  for i in range(draws):
    seeded = trainer.cfg.copy_and_resolve_references()
    seeded.eval.seed = trainer.cfg.eval.seed + i
    out.append(dataclasses.replace(trainer, cfg=seeded).evaluate(params))
  return out


def summarize(draws: list[dict], key: str = "nll") -> stats.MeanSD:
  """Mean ± s.d. of one field of :func:`nelbo_draws`' summaries."""
  return stats.mean_sd([d[key] for d in draws])
