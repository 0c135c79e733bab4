"""LLaDA's OLMo-style ``config.json`` <-> the bdiff ``model`` section.

LLaDA (ML-GSAI/LLaDA; Nie et al. 2025, "Large Language Diffusion Models") ships its weights as
``LLaDAModelLM`` (model_type ``llada``) with the keys of its ``configuration_llada.py`` (OLMo's
``d_model``, ``n_heads``, ``mlp_hidden_size``, ...), not Llama's. Its released checkpoints
(LLaDA-8B-Base/Instruct, LLaDA 1.5) use the ``llama`` block of its ``modeling_llada.py``:
pre-norm RMSNorm, rotate-half RoPE over ``head_dim = d_model / n_heads``, SwiGLU written as
``ff_out(silu(ff_proj(x)) * up_proj(x))``, no biases and an untied head: bdiff's Llama layer,
read under full bidirectional attention (``is_causal=False`` in its attention), each position
predicting its own token (no token shift), with its in-vocabulary mask token (126336 in the 8B
models). Every switch of that config that changes what the weights compute is checked: a value
bdiff cannot compute exactly is a ValueError naming the key. Dropout rates are not (they do not
change a forward pass at inference, and bdiff trains without dropout).
"""
from __future__ import annotations

ARCHITECTURE = "LLaDAModelLM"
MODEL_TYPE = "llada"

# key -> (its default in LLaDA's ModelConfig, the values bdiff computes exactly)
SWITCHES = {
    "block_type": ("sequential", ("llama",)),         # separate q/k/v and up_proj
    "activation_type": ("swiglu", ("silu",)),         # silu(ff_proj) * up_proj
    "layer_norm_type": ("default", ("rms",)),
    "layer_norm_with_affine": (True, (True,)),
    "bias_for_layer_norm": (None, (None, False)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (None, False)),
    "rope": (False, (True,)),
    "rope_full_precision": (True, (True,)),           # bdiff applies RoPE in fp32
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),        # LLaDA's q/k norm spans all heads
    "input_emb_norm": (False, (False,)),
    "scale_logits": (False, (False,)),
    "weight_tying": (True, (False,)),                 # the released checkpoints are untied
    "block_group_size": (1, (1,)),                    # groups rename the tensors
}
# What an export writes for the switches (the values above that bdiff computes).
EXPORT_SWITCHES = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
                   "layer_norm_with_affine": True, "bias_for_layer_norm": False,
                   "include_bias": False, "include_qkv_bias": False, "rope": True,
                   "rope_full_precision": True, "alibi": False, "attention_layer_norm": False,
                   "input_emb_norm": False, "scale_logits": False, "weight_tying": False,
                   "block_group_size": 1}


def _check_switches(hf: dict) -> None:
  for key, (default, allowed) in SWITCHES.items():
    value = hf.get(key, default)
    if not any(type(value) is type(a) and value == a for a in allowed):  # 1 is not True
      raise ValueError(f"config.json {key}={value!r} is not supported for LLaDA (bdiff needs "
                       f"one of {list(allowed)})")


def _positive_int(hf: dict, key: str) -> int:
  value = hf.get(key)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"config.json {key}={value!r}: a LLaDA checkpoint needs a positive integer")
  return value


def _kv_heads(hf: dict, heads: int) -> int:
  """LLaDA's ``effective_n_kv_heads``: n_kv_heads, else 1 under multi_query_attention, else
  n_heads; the two keys must agree when both are set."""
  mqa, kv = hf.get("multi_query_attention"), hf.get("n_kv_heads")
  if kv is None:
    return 1 if mqa else heads
  kv = _positive_int(hf, "n_kv_heads")
  if mqa is not None and kv != (1 if mqa else heads):
    raise ValueError(f"config.json n_kv_heads={kv} contradicts multi_query_attention={mqa}")
  return kv


def model_fields(hf: dict) -> dict:
  """The bdiff ``model`` keys a LLaDA config determines (its switches checked first).

  The embedding table and the head have ``embedding_size`` rows (OLMo pads ``vocab_size`` up
  to it), so that is bdiff's ``vocab_size``: the logits cover the same ids as LLaDA's.
  """
  _check_switches(hf)
  d_model, heads = _positive_int(hf, "d_model"), _positive_int(hf, "n_heads")
  if d_model % heads:
    raise ValueError(f"config.json d_model={d_model} is not a multiple of n_heads={heads}")
  vocab = _positive_int(hf, "vocab_size")
  # LLaDA's own fallbacks: `embedding_size or vocab_size`, `mlp_ratio * d_model`.
  rows = _positive_int({"embedding_size": hf.get("embedding_size") or vocab}, "embedding_size")
  if rows < vocab:
    raise ValueError(f"config.json embedding_size={rows} is below vocab_size={vocab}")
  if hf.get("mlp_hidden_size") is not None:
    mlp = _positive_int(hf, "mlp_hidden_size")
  else:
    mlp = _positive_int({"mlp_ratio": hf.get("mlp_ratio", 4)}, "mlp_ratio") * d_model
  return dict(vocab_size=rows, d_model=d_model, n_layers=_positive_int(hf, "n_layers"),
              n_heads=heads, n_kv_heads=_kv_heads(hf, heads), head_dim=d_model // heads,
              mlp_dim=mlp, rope_theta=float(hf.get("rope_theta", 10000.0)),
              norm_eps=float(hf.get("rms_norm_eps", 1e-5)), qk_norm=False, qkv_bias=False,
              tie_embeddings=False)


def max_positions(hf: dict) -> int:
  """The context LLaDA was trained for (``max_sequence_length``)."""
  return int(hf.get("max_sequence_length") or 0)


def hf_config(model_cfg, base: dict | None, dtype: str) -> dict:
  """LLaDA's ``config.json`` for a bdiff ``model`` section, on top of ``base`` (an imported
  LLaDA config, whose other keys such as token ids, auto_map and context are kept).

  ``model_cfg`` is one ``families`` writes as LLaDA (bidirectional, its own mask token, no
  q/k/v biases or q/k norm); ValueError naming the key where LLaDA's block still computes
  something else: its head_dim is ``d_model / n_heads``, it has no RoPE scaling, and bdiff
  writes its head untied.
  """
  checks = {"model.head_dim": model_cfg.head_dim * model_cfg.n_heads == model_cfg.d_model,
            "model.rope_scaling.type": model_cfg.rope_scaling.type == "none",
            "model.tie_embeddings": not model_cfg.tie_embeddings}
  bad = [key for key, ok in checks.items() if not ok]
  if bad:
    raise ValueError(f"{bad[0]} cannot be written as LLaDA, whose block needs head_dim = "
                     "d_model / n_heads, no RoPE scaling and an untied head")
  out = dict(base or {})
  vocab = out.get("vocab_size")
  if not isinstance(vocab, int) or vocab > model_cfg.vocab_size:
    vocab = model_cfg.vocab_size
  out.update(EXPORT_SWITCHES, architectures=[ARCHITECTURE], model_type=MODEL_TYPE,
             d_model=model_cfg.d_model, n_heads=model_cfg.n_heads,
             n_kv_heads=model_cfg.n_kv_heads, multi_query_attention=None,
             n_layers=model_cfg.n_layers, mlp_hidden_size=model_cfg.mlp_dim,
             vocab_size=vocab, embedding_size=model_cfg.vocab_size,
             rms_norm_eps=model_cfg.norm_eps, rope_theta=model_cfg.rope_theta,
             mask_token_id=model_cfg.mask_token_id, torch_dtype=dtype)
  out.pop("dtype", None)
  return out
