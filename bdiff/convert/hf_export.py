"""bdiff run directory -> Hugging Face checkpoint directory (``bdiff export``).

Writes ``config.json`` in the family's own format (the imported checkpoint's config with the
model's values, or a Llama/Qwen2/Qwen3 config chosen by the model's switches for a run bdiff
trained itself), ``model.safetensors`` in the imported checkpoint's dtype (float32 for bdiff's
own runs) and the tokenizer files kept with the run. Tensors are the inverse of the import's
transposes and reshapes, so import -> export gives back the same bits.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np

from bdiff import runs
from bdiff.convert import families, layout
from bdiff.convert.hf_import import HF_SUBDIR, META
from bdiff.convert.safetensors_io import write

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


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


def hf_tensors(params, model_cfg, dtype: str = "float32") -> dict[str, np.ndarray]:
  """HF name -> numpy tensor for a bdiff params tree (gathered to this host).

  bdiff's own tied head scales logits by 1/sqrt(d_model), which a HF tied head cannot: it is
  written as an untied ``lm_head`` holding the scaled embedding (the same function).
  """
  maps = layout.tensor_maps(params, model_cfg)
  out = {}
  for m, leaf in zip(maps, jax.tree.leaves(params)):
    for name, value in m.to_hf(np.asarray(jax.device_get(leaf))).items():
      out[name] = value
  if model_cfg.tie_embeddings and model_cfg.tied_logit_scale:
    out["lm_head.weight"] = out["model.embed_tokens.weight"] * np.float32(
        model_cfg.d_model ** -0.5)
  return {name: value.astype(NUMPY_DTYPES[dtype]) for name, value in out.items()}


def check_exportable(cfg) -> None:
  """A bdiff model with an appended [MASK] row exports as a plain AR LM, which is only what
  it computes when it was trained as one: block size 1 with token shift (position i's logits
  predict token i + 1). ValueError naming the keys otherwise."""
  if cfg.model.mask_token_id < 0 and (cfg.diffusion.block_size != 1
                                      or not cfg.diffusion.token_shift):
    raise ValueError(
        "export writes Llama/Qwen next-token models; this run has diffusion.block_size="
        f"{cfg.diffusion.block_size}, diffusion.token_shift={cfg.diffusion.token_shift} and "
        "no mask token in its vocabulary (model.mask_token_id=-1), so its logits are not "
        "next-token logits: export runs trained with block_size=1 and token_shift=True, or "
        "converted block-diffusion checkpoints (SDAR, Fast-dLLM v2)")


def export_to_hf(workdir: str, out_dir: str, *, dtype: str | None = None) -> dict:
  """Write the run in ``workdir`` (EMA weights when it has them) as a HF directory.

  ``dtype`` defaults to the imported checkpoint's (float32 for runs bdiff trained itself).
  Returns a summary: family, dtype, tensors, files written.
  """
  side, meta, base = _side(workdir)
  dtype = dtype or meta.get("dtype", "float32")
  if dtype not in NUMPY_DTYPES:
    raise ValueError(f"export dtype must be one of {sorted(NUMPY_DTYPES)}, got {dtype!r}")
  cfg, params, _ = runs.restore_params(workdir)
  check_exportable(cfg)
  hf = families.hf_config_from_model(cfg.model, base, dtype, cfg.diffusion.block_size)
  tensors = hf_tensors(params, cfg.model, dtype)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2)
  files = ["config.json", os.path.basename(write(out_dir, tensors))]
  if os.path.isdir(side):
    for name in sorted(os.listdir(side)):
      if name not in ("config.json", META):
        shutil.copy2(os.path.join(side, name), os.path.join(out_dir, name))
        files.append(name)
  return {"family": hf["model_type"], "dtype": dtype, "tensors": len(tensors), "files": files,
          "out_dir": os.path.abspath(out_dir)}
