"""One compiled train step per stage of the block-size curriculum (NBDiff, arXiv 2512.06776).

The block size fixes the two-stream attention mask and the noise layout, so each stage's block
size is a different static program: :class:`StagedTrainStep` builds the jitted step for a block
size the first time a step of that stage runs and reuses it afterwards (a stage boundary costs
one compile, every later step of the stage none). The stage comes from the step number alone
(:func:`bdiff.diffusion.curriculum.block_size_at`), so resuming mid-curriculum is exact.

Held-out NELBO is always evaluated at the final block size (``diffusion.block_size``): the one
the run is trained toward and sampled with, so evaluations across stages stay comparable.
"""
from __future__ import annotations

from typing import Any, Callable

from bdiff.diffusion import curriculum as curriculum_lib


def stage_config(cfg, block_size: int):
  """A copy of ``cfg`` that trains at ``block_size`` with no curriculum left to apply."""
  stage = cfg.copy_and_resolve_references()
  with stage.unlocked():
    stage.diffusion.block_size = block_size
    stage.diffusion.block_curriculum = []
  return stage


def block_size_at(cfg, step: int) -> int:
  """The block size the run trains with at ``step``."""
  d = cfg.diffusion
  return curriculum_lib.block_size_at(d.block_curriculum, d.block_size, step)


class StagedTrainStep:
  """``(state, batch, step) -> (state, metrics)`` with the step compiled per stage block size.

  Args:
    build: ``cfg -> jitted train step`` (e.g. a partial of ``step.jit_train_step``).
    cfg: the run's full config.
  """

  def __init__(self, build: Callable[[Any], Callable], cfg):
    self._build, self._cfg = build, cfg
    self._steps: dict[int, Callable] = {}

  def compiles_at(self, step: int) -> bool:
    """Whether ``step`` opens a stage whose step is not built yet (the first step included)."""
    return block_size_at(self._cfg, step) not in self._steps

  def _build_stage(self, b: int) -> Callable:
    staged = bool(self._cfg.diffusion.block_curriculum)
    return self._build(stage_config(self._cfg, b) if staged else self._cfg)

  def compile(self, step: int, state, batch) -> None:
    """Build ``step``'s stage and compile it ahead of time for these arguments' shapes, so
    the loop can keep a stage's compilation out of its step time."""
    b = block_size_at(self._cfg, step)
    if b not in self._steps:
      fn = self._build_stage(b)
      # A jitted step compiles here; any other callable (a test double) compiles when called.
      self._steps[b] = fn.lower(state, batch).compile() if hasattr(fn, "lower") else fn

  def for_step(self, step: int) -> Callable:
    """The step of ``step``'s stage (built on first use, compiled on first call)."""
    b = block_size_at(self._cfg, step)
    if b not in self._steps:
      self._steps[b] = self._build_stage(b)
    return self._steps[b]

  def __call__(self, state, batch, step: int | None = None):
    """One step; ``step`` defaults to ``state.step`` (a device read: the loop passes it)."""
    step = int(state.step) if step is None else step
    state, metrics = self.for_step(step)(state, batch)
    if self._cfg.diffusion.block_curriculum:  # logged, so a run's stages can be read back
      metrics = dict(metrics, block_size=block_size_at(self._cfg, step))
    return state, metrics
