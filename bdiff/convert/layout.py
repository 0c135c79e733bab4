"""Where each bdiff parameter lives in a Hugging Face checkpoint, and how to move a slice of it.

HF stores a linear layer as ``weight[out, in]`` and a layer stack as one tensor per layer
(``model.layers.{i}...``); bdiff stores ``kernel[in, *out]`` (heads split out), stacks layers on
a leading axis when ``model.scan_layers``, and may append a [MASK] row to the embedding. Each
:class:`TensorMap` turns any rectangular slice of a bdiff parameter into reads of only the HF
rows/columns that slice needs (so a device's shard is read without the whole tensor), and turns
a whole bdiff parameter back into HF tensors for export (pure transposes/reshapes: bit-exact).

Two naming schemes hold the same layers: Llama/Qwen's (``model.layers.{i}.self_attn.q_proj``),
used by every family but one, and LLaDA's OLMo-style one (ML-GSAI/LLaDA ``modeling_llada.py``:
``model.transformer.blocks.{i}.q_proj``, ``attn_out`` for the output projection, ``ff_proj``
for the SwiGLU gate, ``ff_out`` for the down projection and for the untied head, ``wte`` and
``ln_f``). LLaDA is the bidirectional family without q/k/v biases; Dream, the one with them,
keeps Qwen2's names (:func:`uses_llada_names`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import numpy as np

# bdiff path inside a decoder layer -> (HF name inside model.layers.{i}, kind)
LAYER_TENSORS = {
    ("attn_norm", "scale"): ("input_layernorm.weight", "vector"),
    ("attn", "q", "kernel"): ("self_attn.q_proj.weight", "linear_in"),
    ("attn", "k", "kernel"): ("self_attn.k_proj.weight", "linear_in"),
    ("attn", "v", "kernel"): ("self_attn.v_proj.weight", "linear_in"),
    ("attn", "q", "bias"): ("self_attn.q_proj.bias", "vector"),
    ("attn", "k", "bias"): ("self_attn.k_proj.bias", "vector"),
    ("attn", "v", "bias"): ("self_attn.v_proj.bias", "vector"),
    ("attn", "o", "kernel"): ("self_attn.o_proj.weight", "linear_out"),
    ("attn", "q_norm", "scale"): ("self_attn.q_norm.weight", "vector"),
    ("attn", "k_norm", "scale"): ("self_attn.k_norm.weight", "vector"),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", "vector"),
    ("mlp", "gate", "kernel"): ("mlp.gate_proj.weight", "linear_in"),
    ("mlp", "up", "kernel"): ("mlp.up_proj.weight", "linear_in"),
    ("mlp", "down", "kernel"): ("mlp.down_proj.weight", "linear_in"),
}
TOP_TENSORS = {
    ("embed",): ("model.embed_tokens.weight", "embed"),
    ("final_norm", "scale"): ("model.norm.weight", "vector"),
    ("head", "kernel"): ("lm_head.weight", "linear_in"),
}
# The same parameters under LLaDA's names (inside model.transformer.blocks.{i}).
LLADA_LAYER_TENSORS = {
    ("attn_norm", "scale"): ("attn_norm.weight", "vector"),
    ("attn", "q", "kernel"): ("q_proj.weight", "linear_in"),
    ("attn", "k", "kernel"): ("k_proj.weight", "linear_in"),
    ("attn", "v", "kernel"): ("v_proj.weight", "linear_in"),
    ("attn", "o", "kernel"): ("attn_out.weight", "linear_out"),
    ("mlp_norm", "scale"): ("ff_norm.weight", "vector"),
    ("mlp", "gate", "kernel"): ("ff_proj.weight", "linear_in"),
    ("mlp", "up", "kernel"): ("up_proj.weight", "linear_in"),
    ("mlp", "down", "kernel"): ("ff_out.weight", "linear_in"),
}
LLADA_TOP_TENSORS = {
    ("embed",): ("model.transformer.wte.weight", "embed"),
    ("final_norm", "scale"): ("model.transformer.ln_f.weight", "vector"),
    ("head", "kernel"): ("model.transformer.ff_out.weight", "linear_in"),
}
LAYER_PREFIX = {False: "model.layers", True: "model.transformer.blocks"}
# Tensors some checkpoints carry that hold nothing bdiff needs (recomputed RoPE tables).
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)

Reader = Callable[[str, tuple], np.ndarray]  # (hf name, tuple of slices) -> array


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One bdiff parameter and the HF tensor(s) it comes from (one per layer if stacked)."""
  path: tuple[str, ...]      # bdiff params path
  shape: tuple[int, ...]     # bdiff shape (leading layer axis when stacked)
  hf_names: tuple[str, ...]  # one name, or one per layer
  kind: str                  # vector | linear_in | linear_out | embed
  stacked: bool
  hf_rows: int = 0           # kind "embed": rows in the HF table (bdiff may append [MASK])

  @property
  def layer_shape(self) -> tuple[int, ...]:
    return self.shape[1:] if self.stacked else self.shape

  @property
  def hf_shape(self) -> tuple[int, ...]:
    s = self.layer_shape
    if self.kind == "vector":
      return (math.prod(s),)
    if self.kind == "linear_in":
      return (math.prod(s[1:]), s[0])
    if self.kind == "linear_out":
      return (s[-1], math.prod(s[:-1]))
    return (self.hf_rows, s[1])

  def read(self, reader: Reader, index: tuple) -> np.ndarray:
    """The bdiff slice ``index`` (slices over ``shape``), reading only what it covers."""
    idx = tuple(slice(*sl.indices(n)[:2]) for sl, n in zip(index, self.shape))
    if not self.stacked:
      return _read_layer(self, reader, self.hf_names[0], idx)
    layers = range(idx[0].start, idx[0].stop)
    parts = [_read_layer(self, reader, self.hf_names[i], idx[1:]) for i in layers]
    return np.stack(parts) if parts else np.zeros((0,) + _sizes(idx[1:]), np.float32)

  def to_hf(self, value: np.ndarray) -> dict[str, np.ndarray]:
    """HF tensors of a whole bdiff parameter (inverse of :meth:`read`)."""
    layers = list(value) if self.stacked else [value]
    return {name: _to_hf_layer(self, v) for name, v in zip(self.hf_names, layers)}


def _sizes(idx: tuple) -> tuple[int, ...]:
  return tuple(sl.stop - sl.start for sl in idx)


def _flat_range(first: slice, rest_shape: tuple[int, ...]) -> slice:
  """HF rows/columns covering ``first`` of a flattened (first, *rest) axis."""
  inner = math.prod(rest_shape)
  return slice(first.start * inner, first.stop * inner)


def _read_layer(m: TensorMap, reader: Reader, name: str, idx: tuple) -> np.ndarray:
  s = m.layer_shape
  if m.kind == "vector":
    flat = reader(name, (_flat_range(idx[0], s[1:]),))
    return flat.reshape(_sizes(idx[:1]) + s[1:])[(slice(None),) + idx[1:]]
  if m.kind == "linear_in":  # HF [prod(out), in] -> bdiff [in, *out]
    block = reader(name, (_flat_range(idx[1], s[2:]), idx[0]))
    block = block.reshape(_sizes(idx[1:2]) + s[2:] + (-1,))[(slice(None),) + idx[2:]]
    return np.moveaxis(block, -1, 0)
  if m.kind == "linear_out":  # HF [out, prod(in)] -> bdiff [*in, out]
    block = reader(name, (idx[-1], _flat_range(idx[0], s[1:-1])))
    block = block.reshape((-1,) + _sizes(idx[:1]) + s[1:-1])
    return np.moveaxis(block[(slice(None), slice(None)) + idx[1:-1]], 0, -1)
  rows = idx[0]  # embed: rows past the HF table are the appended [MASK] row(s), zeros
  hf_stop = min(rows.stop, m.hf_rows)
  width = idx[1].stop - idx[1].start
  real = (reader(name, (slice(rows.start, hf_stop), idx[1])) if hf_stop > rows.start
          else np.zeros((0, width), np.float32))
  pad = np.zeros((rows.stop - rows.start - real.shape[0], width), real.dtype)
  return np.concatenate([real, pad])


def _to_hf_layer(m: TensorMap, v: np.ndarray) -> np.ndarray:
  if m.kind == "vector":
    return v.reshape(-1)
  if m.kind == "linear_in":
    return np.moveaxis(v, 0, -1).reshape(m.hf_shape)
  if m.kind == "linear_out":
    return np.moveaxis(v, -1, 0).reshape(m.hf_shape)
  return v[:m.hf_rows]


def uses_llada_names(model_cfg) -> bool:
  """LLaDA's tensor names: a bidirectional model without q/k/v biases (Dream has them)."""
  return model_cfg.attention == "bidirectional" and not model_cfg.qkv_bias


def tensor_maps(abstract_params, model_cfg) -> list[TensorMap]:
  """A :class:`TensorMap` for every leaf of a bdiff params tree (ShapeDtypeStructs)."""
  maps = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
    keys = tuple(str(p.key) for p in path)
    maps.append(_map_leaf(keys, tuple(leaf.shape), model_cfg))
  return maps


def _map_leaf(keys: tuple[str, ...], shape: tuple[int, ...], model_cfg) -> TensorMap:
  llada = uses_llada_names(model_cfg)
  top, layer_tensors = ((LLADA_TOP_TENSORS, LLADA_LAYER_TENSORS) if llada
                        else (TOP_TENSORS, LAYER_TENSORS))
  if keys in top:
    name, kind = top[keys]
    return TensorMap(keys, shape, (name,), kind, False, hf_rows=model_cfg.vocab_size)
  head, rest = keys[0], keys[1:]
  if rest not in layer_tensors:
    raise ValueError(f"bdiff parameter {'/'.join(keys)} has no Hugging Face counterpart"
                     + (" in LLaDA's format" if llada else ""))
  name, kind = layer_tensors[rest]
  prefix = LAYER_PREFIX[llada]
  if head == "layers":  # nn.scan stack: one HF tensor per layer
    names = tuple(f"{prefix}.{i}.{name}" for i in range(shape[0]))
    return TensorMap(keys, shape, names, kind, True)
  layer = int(head.removeprefix("layer_"))
  return TensorMap(keys, shape, (f"{prefix}.{layer}.{name}",), kind, False)
