"""The bdiff decoder: a Llama/Qwen2/Qwen3-family transformer with a [MASK] token.

One network serves every block size. By default the embedding table has ``vocab_size + 1`` rows
(the last is [MASK], ``mask_id = vocab_size``) and the output head covers the ``vocab_size`` real
tokens only: the MDLM/BD3-LM "never predict MASK" rule holds by construction (Sahoo et al. 2024;
as in google/init2winit ``mdlm_rope_nanodo.py``). A checkpoint whose vocabulary already holds a
mask token (SDAR's ``<|MASK|>``) sets ``model.mask_token_id`` instead, and the table keeps its
``vocab_size`` rows.

Entry points:
  * ``Transformer.__call__(tokens, positions, mask, ...)``: a plain forward under any mask,
    optionally against a prefix KV cache (the sampler) and returning the new K/V.
  * :func:`two_stream_logits`: BD3-LM vectorised training over ``[x_t ; x_0]`` with the
    two-stream mask and duplicated positions (Arriola et al. 2025, kuleshov-group/bd3lms).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bdiff import masks as masks_lib
from bdiff.models import layers
from pallas_kernels.block_sparse_attention.backends import BACKENDS as PALLAS_BACKENDS

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def default_model_config() -> ml_collections.ConfigDict:
  """Defaults of the ``model`` config section (a ~1M-parameter CPU model)."""
  return ml_collections.ConfigDict(dict(
      vocab_size=259,          # set from the tokenizer; MASK id = vocab_size
      d_model=128,
      n_layers=2,
      n_heads=4,
      n_kv_heads=2,
      head_dim=32,
      mlp_dim=384,
      rope_theta=10000.0,
      norm_eps=1e-6,
      qk_norm=False,
      qkv_bias=False,
      tie_embeddings=True,
      tied_logit_scale=True,   # tied head scaled by 1/sqrt(d_model) (bdiff's own models);
                               # Hugging Face checkpoints use the plain embedding: False
      rope_scaling=ml_collections.ConfigDict(dict(
          type="none",         # none | llama3 (Llama 3.1 frequency rescaling)
          factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
          original_max_position_embeddings=8192)),
      mask_token_id=-1,        # -1: [MASK] is an extra embedding row (id vocab_size);
                               # >= 0: the checkpoint's own mask token, inside the vocabulary
      vocab_pad_multiple=1,    # embedding rows rounded up to a multiple of this, so the
                               # table splits evenly over model.tensor (rows never read)
      vocab_from_tokenizer=True,  # training resets vocab_size to the tokenizer's; converted
                               # checkpoints keep their (padded) table: False
      attention="block_causal",  # the checkpoint's regime: block_causal (AR and block
                               # diffusion) | bidirectional (LLaDA/Dream-style)
      dtype="bfloat16",        # compute dtype; params are always fp32
      scan_layers=True,
      remat="none",            # none | full | dots
      attention_impl="xla",    # xla | cudnn | pallas | tokamax
      pallas_backend="",       # impl "pallas": "" = by platform | one of PALLAS_BACKENDS
  ))


def validate_model_config(cfg) -> None:
  """Raise ValueError naming the offending ``model.*`` key."""
  for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
              "mlp_dim", "vocab_pad_multiple"):
    if not isinstance(cfg[key], int) or cfg[key] <= 0:
      raise ValueError(f"model.{key} must be a positive integer, got {cfg[key]!r}")
  if cfg.n_heads % cfg.n_kv_heads:
    raise ValueError(f"model.n_heads={cfg.n_heads} must be a multiple of "
                     f"model.n_kv_heads={cfg.n_kv_heads}")
  if cfg.head_dim % 2:
    raise ValueError(f"model.head_dim must be even for RoPE, got {cfg.head_dim}")
  if cfg.remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {cfg.remat!r}")
  if cfg.attention_impl not in ("xla", "cudnn", "pallas", "tokamax"):
    raise ValueError(f"model.attention_impl must be xla, cudnn, pallas or tokamax, got "
                     f"{cfg.attention_impl!r}")
  if cfg.pallas_backend not in ("",) + PALLAS_BACKENDS:
    raise ValueError(f"model.pallas_backend must be '' (by platform) or one of "
                     f"{PALLAS_BACKENDS}, got {cfg.pallas_backend!r}")
  try:
    jnp.dtype(cfg.dtype)
  except TypeError as e:
    raise ValueError(f"model.dtype is not a dtype: {cfg.dtype!r}") from e
  _validate_checkpoint_keys(cfg)


ATTENTION_REGIMES = ("block_causal", "bidirectional")


def _validate_checkpoint_keys(cfg) -> None:
  """The keys that describe a converted checkpoint's family (see bdiff.convert)."""
  if not -1 <= cfg.mask_token_id < cfg.vocab_size or isinstance(cfg.mask_token_id, bool):
    raise ValueError(f"model.mask_token_id must be -1 (an appended row) or a token id below "
                     f"model.vocab_size={cfg.vocab_size}, got {cfg.mask_token_id!r}")
  if cfg.attention not in ATTENTION_REGIMES:
    raise ValueError(f"model.attention must be one of {ATTENTION_REGIMES}, got "
                     f"{cfg.attention!r}")
  rs = cfg.rope_scaling
  if rs.type not in ("none", "llama3"):
    raise ValueError(f"model.rope_scaling.type must be 'none' or 'llama3', got {rs.type!r}")
  if rs.type == "llama3" and not (rs.factor > 0 and 0 < rs.low_freq_factor < rs.high_freq_factor
                                  and rs.original_max_position_embeddings > 0):
    raise ValueError("model.rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < "
                     f"high_freq_factor and original_max_position_embeddings > 0, got {rs}")


def embed_rows(cfg) -> int:
  """Rows of the embedding table: the vocabulary, plus [MASK] unless the vocabulary has one,
  rounded up to ``vocab_pad_multiple`` (padding rows are never looked up)."""
  rows = cfg.vocab_size + (1 if cfg.mask_token_id < 0 else 0)
  return -(-rows // cfg.vocab_pad_multiple) * cfg.vocab_pad_multiple


def mask_token_id(cfg) -> int:
  """The [MASK] id of a ``model`` config: its own token, or the appended row ``vocab_size``."""
  return cfg.vocab_size if cfg.mask_token_id < 0 else cfg.mask_token_id


class Transformer(nn.Module):
  """Decoder-only transformer; ``config`` is the ``model`` ConfigDict (frozen)."""
  config: Any

  @property
  def mask_id(self) -> int:
    return mask_token_id(self.config)

  def _layers(self, static_mask, split_ext: bool = False):
    cfg = self.config
    layer = layers.DecoderLayer
    policy = REMAT_POLICIES[cfg.remat]
    if cfg.remat != "none":
      layer = nn.remat(layer, policy=policy, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      return nn.scan(
          layer, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, 0, 0), length=cfg.n_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, static_mask, split_ext, name="layers")
    return [layer(cfg, static_mask, split_ext, name=f"layer_{i}")
            for i in range(cfg.n_layers)]

  @nn.compact
  def __call__(self, tokens, positions, mask=None, *, segment_ids=None, cache=None,
               num_logits: int | None = None, return_kv: bool = False, plan=None,
               attn_ext=None, return_attn_ext: bool = False):
    """Forward pass.

    Args:
      tokens: [b, l] int32 below ``embed_rows(config)`` (the [MASK] id is ``mask_id``).
      positions: [b, l] int32 RoPE positions.
      mask: a bdiff.masks object over (l, S + l) or a bool array [b, (h,) l, S + l], where S is
        the cache length (0 without cache); None = full attention.
      segment_ids: optional (q_seg [b, l], kv_seg [b, S + l]) for packed sequences.
      cache: optional (k, v), each [n_layers, b, S, kv_heads, head_dim], post-RoPE, attended
        before the current tokens (read-only here; the caller writes new K/V).
      num_logits: compute logits for the first ``num_logits`` positions only (the noisy half
        of the two-stream input); None = all.
      return_kv: also return this call's (k, v), each [n_layers, b, l, kv_heads, head_dim].
      plan: optional per-layer block-sparse ``SparsityPlan`` (leaves with a leading
        ``n_layers`` axis, tiles over (l, S + l)) replacing full attention (``mask`` must be
        None or full): runtime top-k key tiles per row and head (SparseD). With the
        ``intermediates`` collection mutable, each layer's post-RoPE queries are sown as
        ``attn_q``.

      return_attn_ext: FlashBlock caching (Caesarhhh/FlashBlock): attend ``cache`` and this
        call's keys as two parts merged through their log-sum-exp (equal to one attention up
        to fp32 rounding) and also return each layer's cache part ``(out [n_layers, b, l,
        heads, head_dim], lse [n_layers, b, heads, l])``, fp32.
      attn_ext: such cache parts from an earlier call, used in place of attending ``cache``
        (whose length S still places this call's keys in ``mask``): only this call's keys are
        attended, and merged with them.

    Returns:
      logits [b, num_logits or l, vocab_size] in fp32 (and the new K/V if ``return_kv``, then
      the cache parts if ``return_attn_ext``).
    """
    if (return_attn_ext or attn_ext is not None) and cache is None:
      raise ValueError("return_attn_ext / attn_ext split attention at the cache: they need "
                       "cache=(k, v)")
    if return_attn_ext and attn_ext is not None:
      raise ValueError("return_attn_ext computes the cache part that attn_ext supplies: pass "
                       "one of them")
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    table = self.param("embed", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")),
        (embed_rows(cfg), cfg.d_model), jnp.float32)
    x = jnp.take(table, tokens, axis=0).astype(dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    static_mask = mask if isinstance(mask, masks_lib.Mask) else None
    dyn_mask = None if static_mask is not None else mask
    x, ys = self._run_layers(x, positions, static_mask, dyn_mask, segment_ids, cache, plan,
                             attn_ext, return_attn_ext)
    x = layers.RMSNorm(cfg.norm_eps, dtype=dtype, name="final_norm")(x)
    if num_logits is not None:
      x = x[:, :num_logits]
    logits = self._head(x, table)
    new_kv, ext = ys if return_attn_ext else (ys, None)
    if return_attn_ext:
      return (logits, new_kv, ext) if return_kv else (logits, ext)
    return (logits, new_kv) if return_kv else logits

  def _run_layers(self, x, positions, static_mask, dyn_mask, segment_ids, cache, plan=None,
                  attn_ext=None, split_ext: bool = False):
    stack = self._layers(static_mask, split_ext)
    if self.config.scan_layers:
      return stack(x, positions, dyn_mask, segment_ids, cache, plan, attn_ext)
    kvs = []
    for i, layer in enumerate(stack):
      layer_cache = None if cache is None else (cache[0][i], cache[1][i])
      layer_plan = None if plan is None else jax.tree.map(lambda a, i=i: a[i], plan)
      layer_ext = None if attn_ext is None else jax.tree.map(lambda a, i=i: a[i], attn_ext)
      x, kv = layer(x, positions, dyn_mask, segment_ids, layer_cache, layer_plan, layer_ext)
      kvs.append(kv)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *kvs)

  def _head(self, x, table):
    return output_head(self.config, x, table)


def output_head(cfg, x, table):
  """Logits (fp32) of final-normed hidden states ``x`` (the tied table or a ``head`` layer,
  created in the calling module's compact scope)."""
  if cfg.tie_embeddings:
    w = table[:cfg.vocab_size].T.astype(x.dtype)  # [d, V]: an appended MASK row excluded
    logits = jnp.einsum("bld,dv->blv", x, w)
    if cfg.tied_logit_scale:
      # bdiff's embeddings are initialised with unit variance; 1/sqrt(d) keeps logits O(1).
      logits = logits * (cfg.d_model ** -0.5)
  else:
    logits = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=x.dtype,
                             param_dtype=jnp.float32,
                             kernel_init=layers.init_with_axes(("embed", "vocab")),
                             name="head")(x)
  logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
  return logits.astype(jnp.float32)


# ------------------------------------------------------------------------------------------
# Layer-wise hook: the Transformer's forward split into embedding, one layer at a time and
# output, on its own parameters. Samplers that decide per layer what to recompute (an
# attention-drift test between layers) compose these; composed over every layer they give
# ``Transformer.__call__``'s logits.


class _Output(nn.Module):
  """The Transformer's final norm and head alone, under the same parameter names."""
  config: Any

  @nn.compact
  def __call__(self, x, table):
    x = layers.RMSNorm(self.config.norm_eps, dtype=jnp.dtype(self.config.dtype),
                       name="final_norm")(x)
    return output_head(self.config, x, table)


def embed_tokens(cfg, params, tokens):
  """``[b, l, d_model]`` input hidden states of ``tokens`` (compute dtype)."""
  return jnp.take(params["embed"], tokens, axis=0).astype(jnp.dtype(cfg.dtype))


def stacked_layer_params(cfg, params):
  """Every layer's parameters with a leading ``n_layers`` axis (scanned or unrolled model)."""
  if cfg.scan_layers:
    return params["layers"]
  return jax.tree.map(lambda *a: jnp.stack(a), *(params[f"layer_{i}"]
                                                 for i in range(cfg.n_layers)))


def run_layer(cfg, layer_p, x, positions, mask, *, segment_ids=None, cache=None):
  """One decoder layer alone, ``layer_p`` its parameters (a slice of
  :func:`stacked_layer_params`): ``(x, (k, v), q)``.

  Arguments as ``Transformer.__call__``'s for one layer (``cache`` is that layer's ``(k, v)``
  ``[b, S, kv_heads, head_dim]``); ``q [b, l, heads, head_dim]`` are the post-RoPE queries.
  """
  static = mask if isinstance(mask, masks_lib.Mask) else None
  layer = layers.DecoderLayer(cfg, static)
  (x, kv), state = layer.apply({"params": layer_p}, x, positions,
                               None if static is not None else mask, segment_ids, cache,
                               mutable=["intermediates"])
  return x, kv, state["intermediates"]["attn"]["attn_q"][0]


def output_logits(cfg, params, x):
  """fp32 logits of the last layer's hidden states ``x`` (final norm, then the head)."""
  head = {k: params[k] for k in ("final_norm", "head") if k in params}
  return _Output(cfg).apply({"params": head}, x, params["embed"])


def make_model(model_cfg) -> Transformer:
  """The Transformer for a ``model`` config section, frozen so the module is hashable."""
  return Transformer(ml_collections.FrozenConfigDict(model_cfg))


def two_stream_logits(model: Transformer, params, xt, x0, block_size: int, *,
                      context_causal: bool = False, want_clean: bool = False,
                      segment_ids=None, positions=None):
  """BD3-LM vectorised training forward over ``[x_t ; x_0]`` (arXiv 2503.09573, section 3.2).

  Both halves get the same positions, so a noisy token and its clean copy share a RoPE
  position; logits come from the noisy half only unless ``want_clean`` (the auxiliary AR loss
  reads the clean stream too). Rows are one sequence with positions ``0..n-1`` and blocks
  counted from the row start, unless ``positions`` are given: then the row holds packed
  documents (positions restart at each one, ``segment_ids`` number them), each document gets
  its own RoPE positions and blocks counted from its own start, and attention stays inside it
  (:func:`bdiff.masks.packed_bd3_training`), which equals training each document alone.

  Args:
    model: the Transformer.
    params: its parameters ({"params": ...} variables).
    xt, x0: [b, n] noisy and clean tokens.
    block_size: diffusion block size B (must divide n).
    context_causal: NBDiff mask (token-causal clean stream).
    want_clean: also return the clean-stream logits.
    segment_ids: optional [b, n] packed-document ids, duplicated over both streams.
    positions: optional [b, n] positions within each document (needs ``segment_ids``).

  Returns:
    (noisy_logits [b, n, V], clean_logits [b, n, V] or None).
  """
  b, n = xt.shape
  row_pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  if block_size == n and positions is None and not (want_clean or context_causal):
    # One block (MDLM): the noisy half attends to itself only, so the clean half is dead
    # weight; skipping it halves the MLP work and quarters the attention work.
    seg = None if segment_ids is None else (segment_ids, segment_ids)
    return model.apply(params, xt, row_pos, masks_lib.block_causal(n, n, n),
                       segment_ids=seg), None
  tokens = jnp.concatenate([xt, x0], axis=1)
  seg = None
  if positions is None:
    mask = masks_lib.BD3Training(n, block_size, context_causal=context_causal)
    pos = row_pos
    if segment_ids is not None:
      both = jnp.concatenate([segment_ids, segment_ids], axis=1)
      seg = (both, both)
  else:
    if segment_ids is None:
      raise ValueError("two_stream_logits: per-document positions need segment_ids (which "
                       "tokens belong to which document)")
    if model.config.attention_impl == "pallas":
      raise ValueError("per-document blocks of packed rows need model.attention_impl 'xla' or "
                       "'cudnn': the Pallas kernels' block-sparse plan is static and cannot "
                       "follow document boundaries")
    mask = masks_lib.packed_bd3_training(positions, segment_ids, block_size, context_causal)
    pos = positions.astype(jnp.int32)
  positions = jnp.concatenate([pos, pos], axis=1)
  logits = model.apply(params, tokens, positions, mask, segment_ids=seg,
                       num_logits=None if want_clean else n)
  if want_clean:
    return logits[:, :n], logits[:, n:]
  return logits, None


def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
