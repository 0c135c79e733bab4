"""bdiff run directory -> Hugging Face checkpoint directory (``bdiff export``).

Writes ``config.json`` in the family's own format (the imported checkpoint's config with the
model's values, or a Llama/Qwen2/Qwen3 config chosen by the model's switches for a run bdiff
trained itself), ``model.safetensors`` in the imported checkpoint's dtype (float32 for bdiff's
own runs) and the tokenizer files kept with the run. Tensors are the inverse of the import's
transposes and reshapes, so import -> export gives back the same bits.

An AR checkpoint adapted to block diffusion (block size > 1, the way SDAR adapts Qwen3 and
Fast-dLLM v2 adapts Qwen2.5) keeps bdiff's [MASK] as an embedding row appended after the
vocabulary, which no AR format has a place for. It is written in the block-diffusion family
that holds the same layers: SDAR (JetAstra/SDAR: Qwen3 layers, read without token shift) or
Fast-dLLM v2 (NVlabs/Fast-dLLM: Qwen2.5 layers, read with token shift). The appended row
becomes a real token of that id (``vocab_size``), added to the exported tokenizer as the
family's mask token, and ``vocab_size`` grows by one; an untied head gets a zero row for it
(bdiff never predicts [MASK]). Re-importing the export gives the same parameters.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil

import jax
import ml_collections
import ml_dtypes
import numpy as np

from bdiff import distributed, runs
from bdiff.convert import families, layout
from bdiff.convert.hf_import import HF_SUBDIR, META
from bdiff.convert.safetensors_io import SINGLE, StreamWriter

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _side(workdir: str) -> tuple[str, dict, dict | None]:
  """(the run's hf/ folder, conversion record or {}, the imported config.json or None)."""
  side = os.path.join(workdir, HF_SUBDIR)
  meta, base = {}, None
  if os.path.isfile(os.path.join(side, META)):
    with open(os.path.join(side, META), encoding="utf-8") as f:
      meta = json.load(f)
  if os.path.isfile(os.path.join(side, "config.json")):
    base = families.read_hf_config(side)
  return side, meta, base


def _scaled_tied_head(model_cfg) -> bool:
  return model_cfg.tie_embeddings and model_cfg.tied_logit_scale


def hf_tensor_specs(params, model_cfg) -> list[tuple[str, tuple[int, ...]]]:
  """(HF name, shape) of every tensor :func:`iter_hf_tensors` yields, from shapes alone
  (nothing is gathered)."""
  specs = []
  for m in layout.tensor_maps(params, model_cfg):
    specs += [(name, m.hf_shape) for name in m.hf_names]
    if m.path == ("embed",) and _scaled_tied_head(model_cfg):
      specs.append(("lm_head.weight", m.hf_shape))
  return [(n, (model_cfg.vocab_size, s[1]) if n == "lm_head.weight" else s) for n, s in specs]


def iter_hf_tensors(params, model_cfg, dtype: str = "float32"):
  """(HF name, numpy tensor) for a bdiff params tree, one parameter gathered to this host at a
  time (a collective across processes: every process iterates it to the end).

  bdiff's own tied head scales logits by 1/sqrt(d_model), which a HF tied head cannot: it is
  written as an untied ``lm_head`` holding the scaled embedding (the same function). An
  untied head narrower than ``model_cfg.vocab_size`` (an adapted model's [MASK] became a
  token) gets zero rows for the tokens it never predicted.
  """
  cast = NUMPY_DTYPES[dtype]
  for m, leaf in zip(layout.tensor_maps(params, model_cfg), jax.tree.leaves(params)):
    for name, value in m.to_hf(distributed.host_array(leaf)).items():
      if name == "lm_head.weight" and value.shape[0] < model_cfg.vocab_size:
        value = np.concatenate([value, np.zeros(
            (model_cfg.vocab_size - value.shape[0], value.shape[1]), value.dtype)])
      yield name, value.astype(cast)
      if name == "model.embed_tokens.weight" and _scaled_tied_head(model_cfg):
        yield "lm_head.weight", (value * np.float32(model_cfg.d_model ** -0.5)).astype(cast)


def hf_tensors(params, model_cfg, dtype: str = "float32") -> dict[str, np.ndarray]:
  """HF name -> numpy tensor for a bdiff params tree (all of it on this host at once; the
  export itself streams :func:`iter_hf_tensors` instead)."""
  return dict(iter_hf_tensors(params, model_cfg, dtype))


def is_adapted(cfg) -> bool:
  """An appended [MASK] row in a model that is not a plain next-token AR model (block size 1
  with token shift): an AR checkpoint adapted to block diffusion."""
  return cfg.model.mask_token_id < 0 and (cfg.diffusion.block_size != 1
                                          or not cfg.diffusion.token_shift)


def exported_model(cfg, tokenizer: str | None) -> ml_collections.ConfigDict:
  """The ``model`` section as the exported family sees it; ValueError naming the keys when
  no Hugging Face format computes what the run computes.

  An adapted run's appended [MASK] row becomes token ``vocab_size`` (``tokenizer``, a HF
  ``tokenizer.json``, is where that token is added; without one there is nothing to add it
  to).
  """
  model = cfg.model
  if is_adapted(cfg):
    d = cfg.diffusion
    if tokenizer is None:
      raise ValueError(
          f"this run has diffusion.block_size={d.block_size}, diffusion.token_shift="
          f"{d.token_shift} and no mask token in its vocabulary (model.mask_token_id=-1), so "
          "its logits are not next-token logits, and it has no Hugging Face tokenizer "
          f"(data.tokenizer={cfg.data.tokenizer!r}) to add its [MASK] token to: export runs "
          "trained with block_size=1 and token_shift=True, or converted checkpoints")
    if not (model.qk_norm or model.qkv_bias):
      raise ValueError(
          "a Llama model (model.qk_norm=False, model.qkv_bias=False) adapted to diffusion."
          f"block_size={d.block_size} has no block-diffusion format to export to: SDAR holds "
          "Qwen3 layers (q/k norms), Fast-dLLM v2 Qwen2.5 layers (q/k/v biases)")
    model = ml_collections.ConfigDict(model.to_dict())
    model.update(vocab_size=cfg.model.vocab_size + 1, mask_token_id=cfg.model.vocab_size)
  return model


def _check_block_semantics(model_type: str, diffusion) -> None:
  """A block-diffusion format is read block-causally, with or without token shift as its
  family does: the run must have been trained that way."""
  family = families.BLOCK_FAMILIES.get(model_type)
  if family is None:
    return
  if diffusion.token_shift != family.token_shift:
    hint = ("Qwen3 models adapt to SDAR with --config.diffusion.token_shift=False; Qwen2 "
            "models to Fast-dLLM v2 keeping token_shift=True")
    raise ValueError(
        f"diffusion.token_shift={diffusion.token_shift}: the {model_type} format reads "
        f"{'with' if family.token_shift else 'without'} token shift, so it would not compute "
        f"what this run learned ({hint})")
  if diffusion.context_causal:
    raise ValueError(
        f"diffusion.context_causal=True: the {model_type} format computes finished blocks "
        "block-causally, not with the token-causal clean stream this run was trained with")


def export_plan(cfg, base: dict | None, tokenizer: str | None, dtype: str
                ) -> tuple[ml_collections.ConfigDict, dict]:
  """(the model section as exported, its config.json) for a run's config, checked before any
  weights are read: ValueError naming the keys when no format computes what the run does."""
  model = exported_model(cfg, tokenizer)
  hf = families.hf_config_from_model(model, base, dtype, cfg.diffusion.block_size)
  _check_block_semantics(hf["model_type"], cfg.diffusion)
  return model, hf


def _tokenizer_source(side: str, cfg) -> str | None:
  """The run's HF tokenizer.json: the converted checkpoint's copy, else data.tokenizer when it
  is such a file (bdiff's byte tokenizer has none)."""
  for path in (os.path.join(side, "tokenizer.json"), cfg.data.tokenizer):
    if path.endswith(".json") and os.path.isfile(path):
      return path
  return None


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _free_token_name(tokenizer: dict, name: str, token_id: int) -> str:
  """``name``, unless the tokenizer already has it as another token: then a name of its own."""
  taken = set(tokenizer.get("model", {}).get("vocab") or {})
  taken |= {t["content"] for t in tokenizer.get("added_tokens", [])}
  return name if name not in taken else f"<|MASK_{token_id}|>"


def write_mask_tokenizer(tokenizer_path: str, config_path: str, out_dir: str, token_id: int,
                         name: str) -> str:
  """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``out_dir`` with the mask as a
  special token of id ``token_id`` (``name``, or a free variant); returns its text.

  The token goes into the model's vocabulary as well as the added tokens: ``tokenizers``
  renumbers an added token that is not in the vocabulary to the next free id, and the mask's
  id may lie past a gap (a padded embedding table, as Qwen's).
  """
  tok = _read_json(tokenizer_path)
  vocab = tok.get("model", {}).get("vocab")
  if not isinstance(vocab, dict):
    raise ValueError(f"{tokenizer_path}: a {tok.get('model', {}).get('type')} tokenizer has no "
                     "id -> token table to add the [MASK] token to (bdiff adds it to BPE and "
                     "WordPiece tokenizers)")
  if token_id in set(vocab.values()) | {t["id"] for t in tok.get("added_tokens", [])}:
    raise ValueError(f"{tokenizer_path} already has a token of id {token_id}, the row the "
                     "model's [MASK] needs (model.vocab_size is smaller than the tokenizer)")
  name = _free_token_name(tok, name, token_id)
  entry = dict(content=name, single_word=False, lstrip=False, rstrip=False, normalized=False,
               special=True)
  vocab[name] = token_id
  tok.setdefault("added_tokens", []).append(dict(id=token_id, **entry))
  tconf = _read_json(config_path)
  tconf["mask_token"] = name
  if isinstance(tconf.get("added_tokens_decoder"), dict):
    tconf["added_tokens_decoder"][str(token_id)] = entry
  for file, data in zip(TOKENIZER_FILES, (tok, tconf)):
    with open(os.path.join(out_dir, file), "w", encoding="utf-8") as f:
      json.dump(data, f, indent=2, ensure_ascii=False)
  return name


def _write_tensors(out_dir: str, specs, tensors, dtype: str, main: bool) -> str:
  """Stream ``tensors`` into ``model.safetensors`` on process 0; the other processes only take
  part in each gather."""
  with (StreamWriter(out_dir, specs, NUMPY_DTYPES[dtype]) if main
        else contextlib.nullcontext()) as writer:
    for name, value in tensors:
      if main:
        writer.write(name, value)
  return SINGLE


def _write_files(out_dir: str, hf: dict, cfg, side: str, tokenizer: str | None,
                 model) -> tuple[list[str], dict]:
  """config.json, the tokenizer (with an adapted run's mask token added) and the checkpoint's
  other files; returns (file names, summary additions)."""
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2)
  files, extra, written = ["config.json"], {}, ()
  if is_adapted(cfg):
    written = TOKENIZER_FILES
    extra["mask_token"] = write_mask_tokenizer(
        tokenizer, os.path.join(side, "tokenizer_config.json"), out_dir, model.mask_token_id,
        families.BLOCK_FAMILIES[hf["model_type"]].mask_token)
    files += list(written)
  if os.path.isdir(side):
    for name in sorted(os.listdir(side)):
      if name not in ("config.json", META) + written:
        shutil.copy2(os.path.join(side, name), os.path.join(out_dir, name))
        files.append(name)
  return files, extra


def export_to_hf(workdir: str, out_dir: str, *, dtype: str | None = None) -> dict:
  """Write the run in ``workdir`` (EMA weights when it has them) as a HF directory.

  ``dtype`` defaults to the imported checkpoint's (float32 for runs bdiff trained itself).
  Multi-host: each process restores its own shards of the weights, which are gathered one
  parameter at a time; process 0 writes every file, the others nothing. Returns a summary:
  family, dtype, tensors, files written (and the mask token an adapted run's [MASK] row
  became).
  """
  side, meta, base = _side(workdir)
  dtype = dtype or meta.get("dtype", "float32")
  if dtype not in NUMPY_DTYPES:
    raise ValueError(f"export dtype must be one of {sorted(NUMPY_DTYPES)}, got {dtype!r}")
  cfg = runs.run_config(workdir)
  tokenizer = _tokenizer_source(side, cfg)
  model, hf = export_plan(cfg, base, tokenizer, dtype)
  cfg, params, _ = runs.restore_params(workdir, cfg)
  specs = hf_tensor_specs(params, model)
  main = distributed.is_main_process()
  if main:
    os.makedirs(out_dir, exist_ok=True)
  weights = _write_tensors(out_dir, specs, iter_hf_tensors(params, model, dtype), dtype, main)
  files, extra = _write_files(out_dir, hf, cfg, side, tokenizer, model) if main else ([], {})
  return {"family": hf["model_type"], "dtype": dtype, "tensors": len(specs), **extra,
          "files": files[:1] + [weights] + files[1:] if main else [],
          "out_dir": os.path.abspath(out_dir)}
