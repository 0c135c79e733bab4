"""The published reference code of LLaDA and Dream, run by scripts/make_hf_fixtures.py.

Needs torch and transformers (not bdiff's CI). The reference files are the families' own, copied
by the user into a directory each (nothing of them is kept in this repository):

  LLaDA (Nie et al. 2025, "Large Language Diffusion Models"): ``modeling_llada.py`` and
    ``configuration_llada.py`` of GSAI-ML/LLaDA-8B-Base on the Hugging Face hub, e.g. as
    vendored at the root of github.com/zhaoyMa/Saber (commit 2f061e2), and ``generate.py`` of
    github.com/ML-GSAI/LLaDA (commit b7e6c35):
      git -C SABER show HEAD:modeling_llada.py > DIR/modeling_llada.py   (same for the others)
  Dream (Ye et al. 2025, "Dream 7B"): ``modeling_dream.py``, ``configuration_dream.py`` and
    ``generation_utils.py`` of Dream-org/Dream-v0-Base-7B, as vendored in github.com/ZHZisZZ/dllm
    (commit ca17675) under ``dllm/pipelines/dream/models/``.

That code was written for transformers 4.4x; under transformers 5 it needs the shims below, none
of which changes what it computes: the "default" RoPE initialiser (``theta^(-2i/d)``, which
transformers 5 dropped from ``ROPE_INIT_FUNCTIONS``), Dream's tied-weight declaration as the
mapping transformers 5 expects, ``use_cache=False`` on LLaDA's config (transformers 5 no longer
keeps the attribute), and Dream's no-op ``validate`` accepting transformers 5's keywords.

Each decode is recorded through a forward hook (the input ids and logits of every denoising
step), so the fixture can also store the per-step trace and how far each decision was from a
tie: ``selection_gap`` (the smallest score of a committed position minus the largest of a
candidate left masked) and ``argmax_gap`` (the smallest top-1 minus top-2 probability at a
committed position).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import modeling_rope_utils


def import_dir(code_dir: str, package: str):
  """A loader of the modules in ``code_dir`` (relative imports resolve inside ``package``,
  absolute ones through sys.path: the two styles the vendored copies use)."""
  if not os.path.isdir(code_dir):
    sys.exit(f"reference code directory {code_dir!r} does not exist (see the docstring)")
  pkg = types.ModuleType(package)
  pkg.__path__ = [os.path.abspath(code_dir)]
  sys.modules[package] = pkg
  sys.path.insert(0, os.path.abspath(code_dir))
  return lambda name: importlib.import_module(f"{package}.{name}")


def _default_rope(config, device=None, **kwargs):
  """transformers 4's ``_compute_default_rope_parameters``: plain ``theta^(-2i/d)``."""
  del device, kwargs
  dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
  exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
  return 1.0 / (config.rope_theta ** exponent), 1.0


modeling_rope_utils.ROPE_INIT_FUNCTIONS.setdefault("default", _default_rope)


def llada_model(code_dir: str, config: dict, seed: int):
  """(LLaDAModelLM with random weights, LLaDA's generate module)."""
  load = import_dir(code_dir, "llada_reference")
  modeling = load("modeling_llada")
  torch.manual_seed(seed)
  model = modeling.LLaDAModelLM(modeling.LLaDAConfig(**config), init_params=True).eval()
  model.config.use_cache = False
  with torch.no_grad():  # norm scales away from 1, so a swapped norm cannot go unnoticed
    for name, p in model.named_parameters():
      if name.endswith(("norm.weight", "ln_f.weight")):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model, load("generate")


def llada_from_dir(code_dir: str, hf_dir: str):
  """LLaDAModelLM holding a LLaDA directory's weights (read as a state dict: transformers 5's
  ``from_pretrained`` expects a ``post_init`` that LLaDA's class does not call)."""
  modeling = import_dir(code_dir, "llada_reference")("modeling_llada")
  with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  model = modeling.LLaDAModelLM(modeling.LLaDAConfig(**hf)).eval()
  model.config.use_cache = False
  model.load_state_dict(load_file(os.path.join(hf_dir, "model.safetensors")), strict=True)
  return model


def dream_model(code_dir: str, hf_dir: str):
  """(DreamModel holding the weights of ``hf_dir``, Dream's generation config class)."""
  load = import_dir(code_dir, "dream_reference")
  modeling, configuration = load("modeling_dream"), load("configuration_dream")
  modeling.DreamModel._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
  with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  rope = hf.pop("rope_parameters", None)  # transformers 5 wrote it; Dream reads rope_theta
  if rope:
    hf["rope_theta"] = rope["rope_theta"]
  config = configuration.DreamConfig(**hf)
  config._attn_implementation = "sdpa"
  model = modeling.DreamModel(config).eval()
  missing, unexpected = model.load_state_dict(
      load_file(os.path.join(hf_dir, "model.safetensors")), strict=False)
  if unexpected or set(missing) - {"lm_head.weight"}:
    sys.exit(f"Dream reference: missing {missing}, unexpected {unexpected}")
  model.tie_weights()
  gen = load("generation_utils")
  gen.DreamGenerationConfig.validate = lambda self, *a, **k: None  # transformers 5 keywords
  return model, gen.DreamGenerationConfig


class Recorder:
  """Forward hook: the (input ids, fp32 logits) of every call of ``model``."""

  def __init__(self, model):
    self.calls = []
    self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

  def _hook(self, module, args, kwargs, output):
    del module
    ids = args[0] if args else kwargs["input_ids"]
    self.calls.append((ids.detach().clone(), output.logits.detach().float().clone()))

  def close(self):
    self._handle.remove()


def trace_and_gaps(calls, final: torch.Tensor, mask_id: int, score_fn, window_fn, start: int):
  """Per step: the generated region after it; and the two tie distances over all steps.

  ``score_fn(logits [L, V]) -> (scores [L], probs [L, V])`` is the reference's confidence;
  ``window_fn(step) -> stop`` bounds the positions it may commit at that step.
  """
  inputs = [ids[0] for ids, _ in calls] + [final[0]]
  trace, sel_gap, arg_gap = [], float("inf"), float("inf")
  for step, (_, logits) in enumerate(calls):
    before, after = inputs[step], inputs[step + 1]
    scores, probs = score_fn(logits[0])
    cand = before == mask_id
    cand[window_fn(step):] = False
    committed = cand & (after != mask_id)
    left = cand & ~committed
    if committed.any() and left.any():
      sel_gap = min(sel_gap, float(scores[committed].min() - scores[left].max()))
    if committed.any():
      top2 = torch.topk(probs[committed], 2, dim=-1).values
      arg_gap = min(arg_gap, float((top2[:, 0] - top2[:, 1]).min()))
      if not torch.equal(after[committed], probs[committed].argmax(-1)):
        sys.exit("reference committed a token that is not its argmax")
    trace.append(after[start:].numpy())
  return np.stack(trace).astype(np.int32), sel_gap, arg_gap


def llada_low_confidence(logits: torch.Tensor):
  """LLaDA ``low_confidence`` remasking: softmax of the raw logits at the argmax."""
  probs = torch.softmax(logits, dim=-1)
  return probs.max(-1).values, probs


def dream_scores(alg: str):
  """Dream's confidence for ``alg`` on token-shifted logits (position i - 1 predicts i)."""

  def score(logits: torch.Tensor):
    shifted = torch.cat([logits[:1], logits[:-1]])
    probs = torch.softmax(shifted, dim=-1)
    if alg == "maskgit_plus":
      return probs.max(-1).values, probs
    if alg == "entropy":
      return (probs * torch.log(probs + 1e-10)).sum(-1), probs
    raise ValueError(f"no score for Dream alg {alg!r}")

  return score
