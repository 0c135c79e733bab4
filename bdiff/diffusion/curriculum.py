"""Block-size curriculum: the diffusion block size grows on a step schedule during training.

NBDiff (Tian et al., "From Next-Token to Next-Block: A Principled Adaptation Path for Diffusion
LLMs", arXiv 2512.06776; YuchuanTian/NBDiff) adapts an autoregressive model (block size 1) to
block diffusion by gradually increasing the block size; TDAR (arXiv 2602.09555;
LuLuLuyi/TDAR) grows it progressively too (4 -> 64). bdiff writes the schedule as
``diffusion.block_curriculum``: a list of ``(start_step, block_size)`` stages, the first
starting at step 0, block sizes non-decreasing, the last equal to ``diffusion.block_size``,
so the model ends training at the block size the sampler reads. An empty list is no
curriculum. The stage of a step is a pure function of the step, so a run resumed mid-curriculum
trains each later step at exactly the block size an uninterrupted run would.
"""
from __future__ import annotations

from typing import Any, Sequence

KEY = "diffusion.block_curriculum"


def stages(curriculum: Sequence[Any]) -> list[tuple[int, int]]:
  """The ``(start_step, block_size)`` pairs of a curriculum; ValueError naming the key."""
  out = []
  for i, stage in enumerate(curriculum):
    if (not isinstance(stage, (list, tuple)) or len(stage) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in stage)):
      raise ValueError(f"{KEY}[{i}] must be a pair of ints (start_step, block_size), "
                       f"got {stage!r}")
    out.append((int(stage[0]), int(stage[1])))
  return out


def check_block_curriculum(curriculum: Sequence[Any], block_size: int, seq_len: int) -> None:
  """Raises ValueError naming ``diffusion.block_curriculum`` when the schedule is unusable."""
  pairs = stages(curriculum)
  if not pairs:
    return
  if pairs[0][0] != 0:
    raise ValueError(f"{KEY}: the first stage must start at step 0, got {pairs[0][0]}")
  for i, ((s0, b0), (s1, b1)) in enumerate(zip(pairs, pairs[1:]), 1):
    if s1 <= s0:
      raise ValueError(f"{KEY}[{i}]: start steps must increase strictly, got {s0} then {s1}")
    if b1 < b0:
      raise ValueError(f"{KEY}[{i}]: block sizes must not shrink, got {b0} then {b1}")
  for i, (_, b) in enumerate(pairs):
    if b < 1 or seq_len % b:
      raise ValueError(f"{KEY}[{i}]: block size {b} must be a positive int dividing "
                       f"seq_len={seq_len}")
  if pairs[-1][1] != block_size:
    raise ValueError(f"{KEY}: the last stage's block size {pairs[-1][1]} must equal "
                     f"diffusion.block_size={block_size} (the block size the sampler uses)")


def block_size_at(curriculum: Sequence[Any], block_size: int, step: int) -> int:
  """The block size training uses at ``step`` (``block_size`` when there is no curriculum)."""
  current = block_size
  for start, b in stages(curriculum):
    if start > step:
      break
    current = b
  return current
