"""Which keys each of the sampler's forwards may attend, under the model's training regime.

Block diffusion trains two streams over ``[x_t ; x_0]``. A noisy query of block ``b`` sees its
own noisy block (bidirectionally) and the clean blocks before ``b``; what differs between the
two regimes bdiff trains is how the *clean* stream itself was computed:

* BD3-LM (Arriola et al., arXiv 2503.09573; kuleshov-group/bd3lms ``block_diff_mask``):
  block-causal, a clean token sees every clean token of its own block and of earlier blocks;
* context-causal (NBDiff, arXiv 2512.06776; YuchuanTian/NBDiff; ``diffusion.context_causal``):
  token-causal, a clean token sees the clean tokens at or before its own position, as in the
  autoregressive model it was adapted from.

The sampler stores clean K/V in its cache, so every forward that *produces* clean K/V (the
prompt prefill and the commit pass of a finished block) must use the regime the model was
trained with, or the cache holds states training never produced. Denoising forwards are the
same in both regimes. In ``commit="separate"`` mode one batched forward serves rows that
commit and rows that denoise, so a context-causal model needs a per-row (array) mask there;
the fused window (previous clean block, then the noisy block) is the same for every row and
stays a static mask object.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from bdiff import masks as masks_lib


@dataclasses.dataclass(frozen=True)
class CleanThenNoisyWindow(masks_lib.CacheWindow):
  """A ``masks.CacheWindow`` whose first ``clean`` queries are token-causal (clean tokens).

  Keys are ``[cache (cache_size) ; window (width)]``; every cache key is structurally allowed
  (per-row validity comes as segment ids). Query ``q < clean`` sees window keys up to itself;
  a later query sees window keys up to the end of its block, as in ``CacheWindow``.
  """
  clean: int = 0

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.clean <= self.width:
      raise ValueError(f"clean={self.clean} must be in [0, width={self.width}]")

  def predicate(self, q, k):
    # Only comparisons, + * // & |: the predicate also runs on int32 tiles inside kernels.
    return (k <= self.cache_size + q) | ((q >= self.clean) & super().predicate(q, k))

  def _tile_layout(self, bq, bk):
    return masks_lib.Mask._tile_layout(self, bq, bk)  # exact, by evaluating the predicate


def clean_mask(width: int, cache_size: int, block_size: int, context_causal: bool):
  """Mask of a forward whose ``width`` queries are all clean (prefill chunk, commit pass)."""
  if context_causal:
    return masks_lib.causal(width, cache_size + width, q_offset=cache_size)
  return masks_lib.cache_window(width, cache_size, block_size)


def loop_mask(width: int, cache_size: int, block_size: int, *, context_causal: bool,
              fused: bool, committing=None):
  """Mask of the loop's cached forward over a ``width``-wide window.

  Args:
    width: ``block_size`` (separate mode) or ``2 * block_size`` (fused: previous block, then
      the active one).
    cache_size: the cache length L.
    block_size: B.
    context_causal: the model's clean stream is token-causal.
    fused: fused commit mode.
    committing: ``[b]`` bool rows whose forward is a commit pass (separate mode only).

  Returns:
    A static mask object, or a ``[b, width, cache_size + width]`` bool array (context-causal
    separate mode, where committing and denoising rows share the forward).
  """
  if not context_causal:
    return masks_lib.cache_window(width, cache_size, block_size)
  if fused:
    return CleanThenNoisyWindow(width, cache_size, block_size, clean=block_size)
  q = jnp.arange(width, dtype=jnp.int32)[:, None]
  k = jnp.arange(width, dtype=jnp.int32)[None, :]
  window = jnp.where(committing[:, None, None], (k <= q)[None], True)
  cache = jnp.ones((committing.shape[0], width, cache_size), bool)
  return jnp.concatenate([cache, window], axis=-1)


def reference_mask(length: int, block_size: int, clean_end, context_causal: bool):
  """Mask of the no-cache reference's full-buffer forward.

  Block-causal for BD3-LM models. For context-causal ones each row's positions before
  ``clean_end[r]`` are its clean context (token-causal) and the rest block-causal: a
  ``[b, length, length]`` bool array.
  """
  if not context_causal:
    return masks_lib.block_causal(length, length, block_size)
  q = jnp.arange(length, dtype=jnp.int32)[:, None]
  k = jnp.arange(length, dtype=jnp.int32)[None, :]
  token = (k <= q)[None]
  block = (k // block_size <= q // block_size)[None]
  return jnp.where(q[None] < clean_end[:, None, None], token, block)
