"""Hugging Face ``config.json`` <-> bdiff ``model`` section, for the decoder families bdiff hosts.

Llama (Meta, "The Llama 3 Herd of Models", 2024; huggingface/transformers ``modeling_llama.py``),
Qwen2/Qwen2.5 (q/k/v biases; ``modeling_qwen2.py``) and Qwen3 (per-head q/k RMSNorm;
``modeling_qwen3.py``) share one layout: pre-norm RMSNorm, rotate-half RoPE, GQA, SwiGLU. What
differs is a handful of switches, read here from the checkpoint's config and checked strictly:
a key whose value bdiff cannot honour is a ValueError naming it, never silently dropped.

SDAR (JetAstra/SDAR; Cheng et al. 2025, "SDAR: A Synergistic Diffusion-AutoRegression Paradigm
for Scalable Sequence Generation") ships Qwen3 weights as ``SDARForCausalLM`` with its
block-diffusion keys ``block_size`` and ``mask_token_id`` (an in-vocabulary ``<|MASK|>``), read
under a block-causal mask and without token shift. Fast-dLLM v2 (NVlabs/Fast-dLLM; Wu et al.
2025, "Fast-dLLM v2: Efficient Block-Diffusion LLM") ships Qwen2.5 weights as
``Fast_dLLM_QwenForCausalLM`` with ``bd_size`` and the tokenizer's ``|<MASK>|``, read under the
same mask with token shift (position i - 1 predicts token i). Dream (HKUNLP/Dream; Ye et al.
2025, "Dream 7B") ships Qwen2.5 weights as ``DreamModel`` with ``mask_token_id``, read with
full bidirectional attention (its attention sets ``is_causal = False``) and token shift; it has
no block size (the whole sequence is one diffusion window). LLaDA (ML-GSAI/LLaDA; Nie et al.
2025, "Large Language Diffusion Models") ships Llama-style layers as ``LLaDAModelLM`` under its
own OLMo-style config keys and tensor names (``bdiff.convert.llada``, ``layout``), read with
full bidirectional attention, no token shift and its in-vocabulary ``<|mdm_mask|>``.
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from bdiff.convert import layout, llada
from bdiff.models import default_model_config

# architectures[0] -> (model_type, q/k/v bias, per-head q/k norm)
FAMILIES = {
    "LlamaForCausalLM": ("llama", False, False),
    "Qwen2ForCausalLM": ("qwen2", True, False),
    "Qwen3ForCausalLM": ("qwen3", False, True),
    "SDARForCausalLM": ("sdar", False, True),
    "Fast_dLLM_QwenForCausalLM": ("Fast_dLLM_Qwen", True, False),
    "DreamModel": ("Dream", True, False),
    llada.ARCHITECTURE: (llada.MODEL_TYPE, False, False),  # its own keys: bdiff.convert.llada
}


@dataclasses.dataclass(frozen=True)
class BlockFamily:
  """How a block-diffusion family writes its block size and mask, and how it decodes."""
  block_key: str | None  # config.json key of the block size; None: no blocks (bidirectional)
  mask_token: str     # the tokenizer's mask token, when config.json has no mask_token_id
  token_shift: bool
  sample: tuple       # (key, value) overrides of the sample section: the reference decoding
  sub_block: int = 0  # the reference's sub-block size (a divisor of the block is used)


BLOCK_FAMILIES = {
    # SDAR generate.py: low_confidence_dynamic, confidence_threshold 0.85.
    "sdar": BlockFamily("block_size", "<|MASK|>", False,
                        (("strategy", "sdar_dynamic"), ("threshold", 0.85))),
    # Fast-dLLM v2 batch_sample: threshold 0.9 within sub-blocks of small_block_size 8, the
    # commit pass's last logit starts a block.
    "Fast_dLLM_Qwen": BlockFamily("bd_size", "|<MASK>|", True,
                                  (("strategy", "fast_dllm_v2"), ("threshold", 0.9),
                                   ("first_token_from_commit", True)), sub_block=8),
    # Dream's diffusion_generate decodes the whole generation as one block, ordered by
    # negative entropy (alg="entropy", its README's setting); a step whose schedule reveals
    # nothing commits nothing.
    "Dream": BlockFamily(None, "<|mask|>", True, (("strategy", "dream"),
                                                  ("confidence", "neg_entropy"),
                                                  ("allow_idle", True))),
    # LLaDA's generate.py: low_confidence remasking, semi-autoregressive blocks of 32 (its
    # example's block_length), one token per step (steps = gen_length).
    llada.MODEL_TYPE: BlockFamily(None, "<|mdm_mask|>", False, (("strategy", "static"),
                                                                ("confidence", "prob"),
                                                                ("block_size", 32))),
}
ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings")


def read_hf_config(hf_dir: str) -> dict:
  """The checkpoint's ``config.json`` as a dict (ValueError if absent or not JSON)."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{hf_dir!r} is not a Hugging Face model directory: no config.json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def family(hf: dict) -> str:
  """The family name of a HF config; ValueError naming ``architectures`` if unsupported."""
  archs = hf.get("architectures") or []
  if len(archs) != 1 or archs[0] not in FAMILIES:
    raise ValueError(f"config.json architectures={archs!r} is not supported; bdiff converts "
                     f"{sorted(FAMILIES)}")
  model_type, _, _ = FAMILIES[archs[0]]
  if hf.get("model_type") != model_type:
    raise ValueError(f"config.json model_type={hf.get('model_type')!r} does not match "
                     f"architectures {archs[0]} (expected {model_type!r})")
  return model_type


def _require(hf: dict, key: str, allowed, default=None):
  value = hf.get(key, default)
  if value not in allowed:
    raise ValueError(f"config.json {key}={value!r} is not supported (bdiff needs one of "
                     f"{list(allowed)})")
  return value


def _rope(hf: dict) -> tuple[float, dict]:
  """(theta, scaling) from either layout: transformers 5 ``rope_parameters`` or the older
  top-level ``rope_theta`` + ``rope_scaling``."""
  params = dict(hf.get("rope_parameters") or {})
  key = "rope_parameters" if params else "rope_scaling"
  if not params:
    params = dict(hf.get("rope_scaling") or {})
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise ValueError(f"config.json {key} type {kind!r} is not supported (bdiff has "
                     f"{list(ROPE_TYPES)})")
  scaling = {"type": "none"}
  if kind == "llama3":
    missing = [k for k in LLAMA3_KEYS if k not in params]
    if missing:
      raise ValueError(f"config.json {key} (llama3) lacks {missing}")
    scaling = {"type": "llama3", **{k: params[k] for k in LLAMA3_KEYS}}
  return float(params["rope_theta"]), scaling


def _check_unsupported(hf: dict, name: str) -> None:
  _require(hf, "hidden_act", ("silu",), "silu")
  _require(hf, "mlp_bias", (False,), False)
  _require(hf, "use_sliding_window", (False,), False)
  # Llama's and Qwen3's attention_bias also biases o_proj, which bdiff's layer has not.
  _require(hf, "attention_bias", (False,), False)
  if hf.get("pretraining_tp", 1) != 1:
    raise ValueError(f"config.json pretraining_tp={hf['pretraining_tp']!r} is not supported "
                     f"for {name} (bdiff needs 1)")


def model_config_from_hf(hf: dict, tokenizer_mask_id: int | None = None
                        ) -> ml_collections.ConfigDict:
  """The bdiff ``model`` section equivalent to a HF config (computation in its dtype).

  A block-diffusion family's mask is config.json's ``mask_token_id``, else
  ``tokenizer_mask_id`` (its mask token looked up in the tokenizer).
  """
  name = family(hf)
  if name == llada.MODEL_TYPE:
    fields, scaling = llada.model_fields(hf), {"type": "none"}
  else:
    fields, scaling = _llama_fields(hf, name)
  dtype = hf.get("dtype", hf.get("torch_dtype")) or "float32"
  cfg = default_model_config()
  cfg.update(
      fields, tied_logit_scale=False, mask_token_id=-1, vocab_from_tokenizer=False,
      vocab_pad_multiple=128,  # [MASK] makes the table odd; keep it splittable over tensor
      dtype="bfloat16" if dtype == "bfloat16" else "float32")
  cfg.rope_scaling.update(scaling)
  cfg.attention = attention_regime(hf)
  if name in BLOCK_FAMILIES:
    cfg.mask_token_id = _block_key({"mask_token_id": tokenizer_mask_id, **hf}, "mask_token_id",
                                   cfg.vocab_size)
  return cfg


def _llama_fields(hf: dict, name: str) -> tuple[dict, dict]:
  """(model keys, rope scaling) of a Llama/Qwen-layout config."""
  _, qkv_bias, qk_norm = FAMILIES[hf["architectures"][0]]
  _check_unsupported(hf, name)
  theta, scaling = _rope(hf)
  heads = int(hf["num_attention_heads"])
  return dict(
      vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
      n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
      n_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
      mlp_dim=int(hf["intermediate_size"]), rope_theta=theta,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qk_norm=qk_norm, qkv_bias=qkv_bias,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False))), scaling


def max_positions(hf: dict) -> int:
  """The checkpoint's context length (0 when config.json does not say)."""
  if family(hf) == llada.MODEL_TYPE:
    return llada.max_positions(hf)
  return int(hf.get("max_position_embeddings") or 0)


def _block_key(hf: dict, key: str, bound: int) -> int:
  value = hf.get(key)
  if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
    raise ValueError(f"config.json {key}={value!r}: a {hf['model_type']} checkpoint needs an "
                     f"integer in [0, {bound})")
  return value


def block_size(hf: dict) -> int:
  """The diffusion block size of a block-diffusion checkpoint (1 for AR families)."""
  name = family(hf)
  if name not in BLOCK_FAMILIES:
    return 1
  key = BLOCK_FAMILIES[name].block_key
  return 0 if key is None else _block_key(hf, key, 1 << 20) or 1


def attention_regime(hf: dict) -> str:
  """block_causal (AR and block-diffusion families) or bidirectional (no block size: Dream,
  LLaDA)."""
  name = family(hf)
  blockless = name in BLOCK_FAMILIES and BLOCK_FAMILIES[name].block_key is None
  return "bidirectional" if blockless else "block_causal"


def hf_config_from_model(model_cfg, base: dict | None, dtype: str, block: int = 1) -> dict:
  """A HF ``config.json`` for a bdiff ``model`` section, on top of ``base`` (the imported
  checkpoint's own config, whose other keys such as token ids are kept), else a Llama/Qwen
  config chosen by the model's switches. A model with its own [MASK] token is written as SDAR
  (q/k norms) or Fast-dLLM v2 (q/k/v biases), with its block size ``block`` under the family's
  key and its ``mask_token_id``. A bidirectional model is written as Dream (q/k/v biases) or
  LLaDA (none), in LLaDA's own config keys."""
  arch = _architecture(model_cfg)
  if arch == llada.ARCHITECTURE:
    return llada.hf_config(model_cfg, base, dtype)
  out = dict(base or {})
  out.pop("rope_scaling", None)
  out.pop("rope_parameters", None)
  out.update(architectures=[arch], model_type=FAMILIES[arch][0], hidden_act="silu",
             vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.d_model,
             num_hidden_layers=model_cfg.n_layers, num_attention_heads=model_cfg.n_heads,
             num_key_value_heads=model_cfg.n_kv_heads, head_dim=model_cfg.head_dim,
             intermediate_size=model_cfg.mlp_dim, rms_norm_eps=model_cfg.norm_eps,
             # A scaled tied head is written untied (see hf_export.hf_tensors).
             tie_word_embeddings=model_cfg.tie_embeddings and not model_cfg.tied_logit_scale,
             rope_theta=model_cfg.rope_theta,
             rope_scaling=_rope_scaling_out(model_cfg.rope_scaling), torch_dtype=dtype)
  if FAMILIES[arch][0] in BLOCK_FAMILIES:
    key = BLOCK_FAMILIES[FAMILIES[arch][0]].block_key
    out.update({key: block} if key else {})
    out["mask_token_id"] = model_cfg.mask_token_id
  out.pop("dtype", None)
  return out


def _architecture(model_cfg) -> str:
  if model_cfg.attention == "bidirectional":
    if model_cfg.mask_token_id < 0 or model_cfg.qk_norm:
      raise ValueError("a bidirectional model (model.attention) exports as Dream or LLaDA, which "
                       "need its own mask token (model.mask_token_id) and model.qk_norm=False")
    return llada.ARCHITECTURE if layout.uses_llada_names(model_cfg) else "DreamModel"
  if model_cfg.mask_token_id >= 0:
    arch = {(False, True): "SDARForCausalLM", (True, False): "Fast_dLLM_QwenForCausalLM"}.get(
        (model_cfg.qkv_bias, model_cfg.qk_norm))
    if arch is None:
      raise ValueError("a model with its own mask token (model.mask_token_id) exports as SDAR "
                       "(model.qk_norm) or Fast-dLLM v2 (model.qkv_bias), exactly one of them")
    return arch
  arch = {(False, False): "LlamaForCausalLM", (True, False): "Qwen2ForCausalLM",
          (False, True): "Qwen3ForCausalLM"}.get((model_cfg.qkv_bias, model_cfg.qk_norm))
  if arch is None:
    raise ValueError("no Hugging Face family has both q/k/v biases (model.qkv_bias) and "
                     "q/k norms (model.qk_norm)")
  return arch


def _rope_scaling_out(scaling) -> dict | None:
  if scaling.type == "none":
    return None
  return {"rope_type": "llama3", **{k: scaling[k] for k in LLAMA3_KEYS}}
