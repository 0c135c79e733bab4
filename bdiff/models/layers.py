"""Building blocks of the Llama/Qwen2/Qwen3-family decoder: RMSNorm, RoPE, GQA attention, SwiGLU.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) so the sharding
rule table in the config maps them onto the mesh. Parameters are fp32; compute runs in
``config.dtype`` (bf16 by default) with fp32 softmax, norms and RoPE.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bdiff import attention as attention_lib

Array = jax.Array


def init_with_axes(axes: tuple[str, ...], scale: float = 1.0, fan_in_axes=(0,)):
  """Truncated-normal fan-in initializer that tags the parameter with logical axis names."""
  init = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                          in_axis=fan_in_axes)
  return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in fp32."""
  eps: float = 1e-6
  axis_name: str = "embed"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                              (self.axis_name,)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * scale).astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling=None) -> np.ndarray:
  """Inverse RoPE frequencies ``theta^(-i / half)``, i < head_dim / 2, in float64.

  ``scaling`` is the ``model.rope_scaling`` section; type "llama3" applies Llama 3.1's
  frequency-dependent rescaling (Meta, "The Llama 3 Herd of Models", 2024; the rule of
  ``_compute_llama3_parameters`` in huggingface/transformers ``modeling_rope_utils.py``):
  wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are divided
  by ``factor``, those shorter than ``... / high_freq_factor`` are kept, and the band between
  is interpolated linearly in ``original / wavelength``.
  """
  half = head_dim // 2
  inv_freq = 1.0 / theta ** (np.arange(half, dtype=np.float64) / half)
  kind = "none" if scaling is None else scaling.type
  if kind == "none":
    return inv_freq
  if kind != "llama3":
    raise ValueError(f"model.rope_scaling.type must be 'none' or 'llama3', got {kind!r}")
  old_len, factor = scaling.original_max_position_embeddings, scaling.factor
  low, high = scaling.low_freq_factor, scaling.high_freq_factor
  wavelen = 2 * np.pi / inv_freq
  smooth = (old_len / wavelen - low) / (high - low)
  medium = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  return np.where(wavelen > old_len / low, inv_freq / factor,
                  np.where(wavelen < old_len / high, inv_freq, medium))


def apply_rope(x: Array, positions: Array, theta: float, scaling=None) -> Array:
  """Rotary embedding (Su et al. 2021), rotate-half layout as in Llama/Qwen2.

  Args:
    x: [b, l, heads, head_dim].
    positions: [b, l] explicit integer positions. Two-stream training passes the same
      positions 0..n-1 for both halves (the clean copy of a token sits at its own position,
      not at its physical index in the doubled input).
    theta: the RoPE base.
    scaling: optional ``model.rope_scaling`` section (see :func:`rope_frequencies`).
  """
  freq = jnp.asarray(rope_frequencies(x.shape[-1], theta, scaling), jnp.float32)  # [half]
  angle = positions.astype(jnp.float32)[..., None] * freq  # [b, l, half]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with optional qk-norm and an optional prefix KV cache.

  The post-RoPE queries are sown as ``intermediates/attn_q`` (kept only when the caller
  makes that collection mutable: a sampler that derives attention patterns reads them);
  ``plan`` (a block-sparse ``SparsityPlan``) restricts attention to runtime-chosen tiles.
  """
  config: Any
  static_mask: Any = None  # a bdiff.masks object (hashable), or None
  # FlashBlock caching (Caesarhhh/FlashBlock): attend the cache and this call's keys as two
  # parts merged through their log-sum-exp, and also return the cache part ``(out, lse)``.
  split_ext: bool = False

  @nn.compact
  def __call__(self, x, positions, dyn_mask=None, segment_ids=None, cache=None, plan=None,
               attn_ext=None):
    """``attn_ext``: the cache part ``(out, lse)`` of an earlier call (FlashBlock), used in
    place of attending ``cache``; only this call's keys are attended, and merged with it."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dense = lambda feats, axes, name: nn.DenseGeneral(  # noqa: E731
        feats, axis=-1, use_bias=cfg.qkv_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=init_with_axes(axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]), name=name)
    q = dense((cfg.n_heads, cfg.head_dim), ("embed", "heads", "head_dim"), "q")(x)
    k = dense((cfg.n_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), "k")(x)
    v = dense((cfg.n_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), "v")(x)
    if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim of each head, before RoPE
      q = RMSNorm(cfg.norm_eps, "head_dim", dtype, name="q_norm")(q)
      k = RMSNorm(cfg.norm_eps, "head_dim", dtype, name="k_norm")(k)
    q = apply_rope(q, positions, cfg.rope_theta, cfg.rope_scaling)
    k = apply_rope(k, positions, cfg.rope_theta, cfg.rope_scaling)
    new_kv = (k, v)  # post-RoPE keys at absolute positions: what a cache stores
    self.sow("intermediates", "attn_q", q)  # a no-op unless "intermediates" is mutable
    mask = self.static_mask if dyn_mask is None else dyn_mask
    ext = None
    if self.split_ext or attn_ext is not None:  # FlashBlock: cache and window parts apart
      out, ext = attention_lib.attend_split(
          q, new_kv, cache, mask, ext=attn_ext, impl=cfg.attention_impl,
          segment_ids=segment_ids, backend=cfg.pallas_backend or None)
      return self._project(out, dtype), new_kv, ext
    if cache is not None:  # one key sequence: the cache, then this call's keys
      k = jnp.concatenate([cache[0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([cache[1].astype(v.dtype), v], axis=1)
    if plan is not None:
      out = attention_lib.attend_under_plan(q, k, v, mask, plan, impl=cfg.attention_impl,
                                            backend=cfg.pallas_backend or None,
                                            segment_ids=segment_ids)
    else:
      out = attention_lib.attend(q, k, v, mask, impl=cfg.attention_impl,
                                 segment_ids=segment_ids, backend=cfg.pallas_backend or None)
    out = self._project(out, dtype)
    return (out, new_kv, ext) if self.split_ext else (out, new_kv)

  def _project(self, out, dtype):
    """The output projection ``o`` over (heads, head_dim)."""
    return nn.DenseGeneral(self.config.d_model, axis=(-2, -1), use_bias=False, dtype=dtype,
                           param_dtype=jnp.float32,
                           kernel_init=init_with_axes(("heads", "head_dim", "embed"),
                                             fan_in_axes=(0, 1)),
                           name="o")(out)


class SwiGLU(nn.Module):
  """Gated MLP of Llama/Qwen2 (Shazeer 2020): down(silu(gate(x)) * up(x))."""
  config: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    proj = lambda feats, axes, name: nn.DenseGeneral(  # noqa: E731
        feats, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=init_with_axes(axes), name=name)
    gate = proj(cfg.mlp_dim, ("embed", "mlp"), "gate")(x)
    up = proj(cfg.mlp_dim, ("embed", "mlp"), "up")(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return proj(cfg.d_model, ("mlp", "embed"), "down")(h)


class DecoderLayer(nn.Module):
  """Pre-norm residual layer. Signature ``(carry, *xs) -> (carry, ys)`` so it can be scanned."""
  config: Any
  static_mask: Any = None
  split_ext: bool = False  # FlashBlock: ys = (K/V, the attention's cache part (out, lse))

  @nn.compact
  def __call__(self, x, positions, dyn_mask, segment_ids, cache, plan=None, attn_ext=None):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = RMSNorm(cfg.norm_eps, dtype=dtype, name="attn_norm")(x)
    h, *ys = Attention(cfg, self.static_mask, self.split_ext, name="attn")(
        h, positions, dyn_mask, segment_ids, cache, plan, attn_ext)
    x = x + h
    x = x + SwiGLU(cfg, name="mlp")(RMSNorm(cfg.norm_eps, dtype=dtype, name="mlp_norm")(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, (tuple(ys) if self.split_ext else ys[0])
