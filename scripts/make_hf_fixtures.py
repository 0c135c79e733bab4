"""Writes the tiny Hugging Face fixtures under tests/fixtures/hf/ (golden logits and generations).

Needs torch, transformers and tokenizers, which bdiff and its CI do not: run it once in a
separate environment and commit its output, e.g.

  python3.12 -m venv /tmp/fixture-venv && /tmp/fixture-venv/bin/pip install torch transformers
  /tmp/fixture-venv/bin/python scripts/make_hf_fixtures.py

For each family it builds a random model on a tiny config, saves it with ``save_pretrained``
(float32 safetensors) next to a small byte-level BPE ``tokenizer.json``, and records with the
reference implementation (transformers, eager attention, float32):
  * ``logits``: the causal forward on fixed ``input_ids`` [2, 12];
  * ``generated``: greedy ``generate`` of 16 tokens after ``prompt_ids`` [2, 6] (no EOS stop);
  * ``text_generated``: the same for the text ``TEXT_PROMPT`` encoded by the fixture tokenizer
    (what ``bdiff sample`` does with a prompt file);
  * ``min_margin``: the smallest top-1/top-2 logit gap met during those generations, so a test
    can tell that greedy decoding is not decided by float rounding.
The families cover what bdiff's converter must get right: Llama with Llama-3 RoPE scaling, an
untied head and a sharded checkpoint (index + two files); Qwen2 with q/k/v biases, a tied head
and a vocabulary padded past the tokenizer; Qwen3 with per-head q/k RMSNorm and a head_dim that
is not hidden_size / heads.

SDAR (JetAstra/SDAR, "SDAR: A Synergistic Diffusion-AutoRegression Paradigm", 2025) checkpoints
are Qwen3 weights under ``architectures: ["SDARForCausalLM"]`` with the block-diffusion keys
``block_size`` and ``mask_token_id`` (its ``<|MASK|>`` token). Its published modeling code
(``modeling_sdar.py``) computes Qwen3's layers under the block-causal mask its ``generate.py``
builds (``tril`` over blocks, repeated ``block_length`` times); that code needs flash-attn, so the
golden ``logits`` here are transformers' Qwen3 under that same mask (an additive 4-D mask), on
inputs whose last block is partly [MASK]. Fast-dLLM v2 (NVlabs/Fast-dLLM, v2) ships Qwen2.5
weights as ``Fast_dLLM_QwenForCausalLM`` with ``bd_size`` and a ``|<MASK>|`` token added to the
tokenizer; its decoder reads the same block-causal mask, so its goldens are made the same way
from Qwen2. Dream (HKUNLP/Dream) ships Qwen2.5 weights as ``DreamModel`` with ``mask_token_id``
and attends bidirectionally (``is_causal = False`` in its modeling_dream.py): its goldens are
Qwen2 under an all-allowed mask.

LLaDA (ML-GSAI/LLaDA, "Large Language Diffusion Models", 2025) is built and run with its own
published modeling code, not a re-implementation: ``modeling_llada.py`` / ``configuration_llada.py``
(an OLMo-style config and tensor names) and ``generate.py`` read from ``--llada_code DIR`` at
generation time (where to get them: scripts/hf_fixture_references.py). Its fixture has GQA, a
table padded past ``vocab_size`` (``embedding_size``) and ``<|mdm_mask|>`` added to the
tokenizer; ``golden.npz`` holds its logits under full attention on inputs 40 % [MASK], and
``decode.npz`` its reference ``generate`` (temperature 0, low_confidence remasking, steps =
gen_length, block lengths 8 and 16). ``dream/decode.npz`` is Dream's reference
``diffusion_generate`` (greedy, ``entropy`` and ``maskgit_plus``, steps = gen length) run with
Dream's own modeling and generation code (``--dream_code DIR``) on the Dream fixture's weights,
after checking that code reproduces ``dream/golden.npz``. Each decode.npz names every setting as
a key, with per-step traces and how far its decisions were from a tie.

``--only NAME[,NAME]`` writes only those fixtures (the others stay byte for byte as committed),
e.g. ``--only llada,dream_decode --llada_code DIR --dream_code DIR``.

``--check_export DIR --family F`` loads a directory written by ``bdiff export`` with
transformers (LLaDA: with its own code, ``--llada_code DIR``) and compares its logits with F's
golden ones (how the exports were checked).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import hf_fixture_references as refs

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
TOKENIZER_VOCAB = 300
TEXT_PROMPT = "def add(a, b):"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"]
TEXT = """The quick brown fox jumps over the lazy dog. Block diffusion language models decode a
block of tokens at a time, in parallel inside the block and autoregressively across blocks.
def add(a, b):\n    return a + b\nfor i in range(10):\n    print(i * i)\n
Pack my box with five dozen liquor jugs. Sphinx of black quartz, judge my vow! 0123456789
"""

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.25,
              hidden_act="silu", bos_token_id=None, eos_token_id=0, pad_token_id=None)

FAMILIES = {
    "llama": (transformers.LlamaConfig, dict(
        vocab_size=TOKENIZER_VOCAB, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=4.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64)), "250KB"),
    "qwen2": (transformers.Qwen2Config, dict(
        vocab_size=TOKENIZER_VOCAB + 20, rms_norm_eps=1e-6, tie_word_embeddings=True,
        use_sliding_window=False, rope_parameters=dict(rope_type="default",
                                                       rope_theta=1000000.0)), None),
    "qwen3": (transformers.Qwen3Config, dict(
        vocab_size=TOKENIZER_VOCAB, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=False, use_sliding_window=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)), None),
}


def make_tokenizer() -> Tokenizer:
  """A byte-level BPE with TOKENIZER_VOCAB entries (the specials first, ids 0..3)."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([TEXT] * 4, trainer)
  if tok.get_vocab_size() != TOKENIZER_VOCAB:
    sys.exit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {TOKENIZER_VOCAB}")
  return tok


def tokenizer_config() -> dict:
  return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
          "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": 256,
          "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                           "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, new_tokens: int = 16) -> np.ndarray:
  """transformers' greedy ``generate``, exactly ``new_tokens`` tokens (no EOS stop)."""
  out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens)
  return out[:, prompt.shape[1]:].numpy()


@torch.no_grad()
def greedy_margin(model, prompt: torch.Tensor, new_tokens: int) -> float:
  """The smallest top-1/top-2 logit gap along the greedy path (full recompute per step)."""
  x, margin = prompt, float("inf")
  for _ in range(new_tokens):
    top = torch.topk(model(x).logits[:, -1].float(), 2, dim=-1).values
    margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
    x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
  return margin


def block_causal_mask(n: int, block: int, batch: int) -> torch.Tensor:
  """SDAR's inference mask, additive: query block i sees key blocks 0..i."""
  blocks = torch.arange(n) // block
  allowed = blocks[:, None] >= blocks[None, :]
  return torch.where(allowed, 0.0, float("-inf"))[None, None].expand(batch, 1, n, n)


def block_forward(model, tokens: torch.Tensor, block: int) -> torch.Tensor:
  """Logits of the last block of ``tokens`` given the blocks before it: what a forward of that
  block against the KV cache of the earlier blocks computes (here recomputed in full)."""
  n = tokens.shape[1]
  return model(tokens, attention_mask=block_causal_mask(n, block, 1)).logits[:, -block:]


@torch.no_grad()
def fast_dllm_v2_decode(model, prompt: list, block: int, small_block: int, max_new: int,
                        threshold: float, mask_id: int) -> tuple[list, int, float]:
  """Fast-dLLM v2's greedy block decoding (``batch_sample`` of its generation functions, one
  row, no block cache, no stop token; every forward, the prefill included, under its
  ``eval_mask``, i.e. block-causal): token-shifted predictions; within each sub-block,
  commit every masked position whose top probability exceeds ``threshold`` and at least the
  most confident one; a finished block's forward predicts the next block's first token.

  Returns (generated ids, denoising steps, the smallest distance of a masked position's
  confidence to the threshold or of its top-2 probabilities: how far from a tie it decided).
  """
  x, steps, margin = torch.tensor([prompt]), 0, float("inf")
  n_blocks = max_new // block + len(prompt) // block
  if len(prompt) > block and len(prompt) % block == 0:  # the prefill's last logit
    x = torch.cat([x, block_forward(model, x, block)[:, -1:].argmax(-1)], dim=1)
  for _ in range(len(prompt) // block, n_blocks):
    x = torch.cat([x, torch.full((1, block - x.shape[1] % block), mask_id)], dim=1)
    for lo in range(0, block, small_block):
      sl = slice(x.shape[1] - block + lo, x.shape[1] - block + lo + small_block)
      while (x[:, sl] == mask_id).any():
        logits = block_forward(model, x, block)
        shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[:, lo:lo + small_block]
        p = torch.softmax(shifted, dim=-1)
        top, conf = p.argmax(-1), p.max(-1).values
        masked = x[:, sl] == mask_id
        top2 = torch.topk(p, 2, dim=-1).values
        margin = min(margin, float((conf - threshold).abs()[masked].min()),
                     float((top2[..., 0] - top2[..., 1])[masked].min()))
        steps += 1
        conf = torch.where(masked, conf, -torch.inf)
        commit = (conf > threshold) & masked
        commit[0, conf[0].argmax()] = True
        x[:, sl] = torch.where(commit, top, x[:, sl])
    x = torch.cat([x, block_forward(model, x, block)[:, -1:].argmax(-1)], dim=1)
  return x[0, len(prompt):].tolist(), steps, margin


@torch.no_grad()
def sdar_sequential_decode(model, prompt: list, block: int, gen_length: int,
                           mask_id: int) -> tuple[list, float]:
  """SDAR's ``block_diffusion_generate`` (its generate.py) with ``remasking_strategy=
  'sequential'``, ``denoising_steps = block_length`` and ``top_k=1`` (its only deterministic
  setting: the sampled token is the argmax): each block, one token per step left to right,
  read without token shift under the block-causal mask; the prompt's whole blocks prefilled.
  Returns (generated ids, the smallest top-1/top-2 logit gap of its choices)."""
  margin = float("inf")
  total = -(-(len(prompt) + gen_length) // block) * block
  x = torch.full((1, total), mask_id)
  x[0, :len(prompt)] = torch.tensor(prompt)
  for start in range(len(prompt) // block * block, total, block):
    while (x[:, start:start + block] == mask_id).any():
      logits = block_forward(model, x[:, :start + block], block)
      first = int((x[0, start:start + block] == mask_id).nonzero()[0])
      top2 = torch.topk(logits[0, first], 2).values
      margin = min(margin, float(top2[0] - top2[1]))
      x[0, start + first] = logits[0, first].argmax()
  return x[0, len(prompt):len(prompt) + gen_length].tolist(), margin


# name -> (weights of, architecture, model_type, config keys, mask token, tokenizer has it)
BLOCK_FAMILIES = {
    "sdar": ("qwen3", "SDARForCausalLM", "sdar",
             dict(block_size=4, fuse_cross_entropy=False), "<|MASK|>", True),
    "fast_dllm_v2": ("qwen2", "Fast_dLLM_QwenForCausalLM", "Fast_dLLM_Qwen",
                     dict(bd_size=4), "|<MASK>|", False),
    # Dream: no block size; its attention is bidirectional over the whole sequence.
    "dream": ("qwen2", "DreamModel", "Dream", dict(), "<|MASK|>", True),
}


@torch.no_grad()
def make_block_family(name: str, tok: Tokenizer, seed: int) -> dict:
  """A Qwen model saved in a block-diffusion family's format, goldens under its block mask."""
  base, arch, model_type, keys, mask_token, in_tokenizer = BLOCK_FAMILIES[name]
  config_cls, extra, _ = FAMILIES[base]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      config_cls(**COMMON, **extra, attn_implementation="eager"), dtype=torch.float32).eval()
  if not in_tokenizer:  # Fast-dLLM v2 adds |<MASK>| to Qwen2.5's vocabulary
    tok = Tokenizer.from_str(tok.to_str())
    tok.add_special_tokens([mask_token])
  mask_id = tok.token_to_id(mask_token)
  out = os.path.join(OUT, name)
  save(model, tok, out, None, mask_token=mask_token if in_tokenizer else None)
  path = os.path.join(out, "config.json")
  with open(path, encoding="utf-8") as f:
    hf = json.load(f)
  hf.update(architectures=[arch], model_type=model_type, **keys)
  if in_tokenizer:
    hf["mask_token_id"] = mask_id
  with open(path, "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2)
  block = keys.get("block_size", keys.get("bd_size"))
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(4, TOKENIZER_VOCAB, size=(2, 12))
  tail = block or 4
  input_ids[:, -tail:] = np.where(rng.random((2, tail)) < 0.6, mask_id, input_ids[:, -tail:])
  logits = model(torch.tensor(input_ids),  # one block of 12: bidirectional
                 attention_mask=block_causal_mask(12, block or 12, 2)).logits.float().numpy()
  causal = model(torch.tensor(input_ids)).logits.float().numpy()
  extra = {}
  if name == "fast_dllm_v2":  # its reference greedy decode, prompts ending inside and at a block
    prompts = [list(rng.integers(4, TOKENIZER_VOCAB, size=k)) for k in (6, 8)]
    runs = [fast_dllm_v2_decode(model, p, block, block, 8, 0.9, mask_id) for p in prompts]
    extra = dict(decode_prompts=pad(prompts), decode_generated=pad([r[0] for r in runs]),
                 decode_steps=np.int32([r[1] for r in runs]),
                 decode_min_margin=np.float32(min(r[2] for r in runs)))
  if name == "sdar":  # its reference sequential decode, prompts ending inside and at a block
    prompts = [list(rng.integers(4, TOKENIZER_VOCAB, size=k)) for k in (6, 8)]
    runs = [sdar_sequential_decode(model, p, block, 8, mask_id) for p in prompts]
    extra = dict(decode_prompts=pad(prompts), decode_generated=pad([r[0] for r in runs]),
                 decode_min_margin=np.float32(min(r[1] for r in runs)))
  np.savez(os.path.join(out, "golden.npz"), input_ids=input_ids.astype(np.int32),
           logits=logits.astype(np.float32), block_size=np.int32(block or 0),
           mask_id=np.int32(mask_id), **extra)
  return {"family": name, "mask_id": mask_id, "block_vs_causal": float(np.abs(logits - causal).max()),
          "bytes": sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))}


def pad(rows: list) -> np.ndarray:
  """Ragged int rows as one int32 array, -1 past each row's end."""
  out = np.full((len(rows), max(map(len, rows))), -1, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def save(model, tok: Tokenizer, out: str, shard_size, mask_token=None) -> None:
  os.makedirs(out, exist_ok=True)
  model.save_pretrained(out, max_shard_size=shard_size or "50MB")
  tok.save(os.path.join(out, "tokenizer.json"))
  tconf = tokenizer_config()
  if mask_token:
    tconf["mask_token"] = mask_token
  with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(tconf, f, indent=2)


@torch.no_grad()
def make_family(name: str, tok: Tokenizer, seed: int) -> dict:
  config_cls, extra, shard_size = FAMILIES[name]
  torch.manual_seed(seed)
  config = config_cls(**COMMON, **extra, attn_implementation="eager")
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  out = os.path.join(OUT, name)
  save(model, tok, out, shard_size)
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(4, TOKENIZER_VOCAB, size=(2, 12))
  prompt_ids = rng.integers(4, TOKENIZER_VOCAB, size=(2, 6))
  logits = model(torch.tensor(input_ids)).logits.float().numpy()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  prompt = torch.tensor(prompt_ids)
  text = torch.tensor([tok.encode(TEXT_PROMPT, add_special_tokens=False).ids])
  generated, text_generated = (greedy(model, x) for x in (prompt, text))
  margin = min(greedy_margin(model, prompt, 16), greedy_margin(model, text, 16))
  np.savez(os.path.join(out, "golden.npz"), input_ids=input_ids.astype(np.int32),
           logits=logits.astype(np.float32), prompt_ids=prompt_ids.astype(np.int32),
           generated=generated.astype(np.int32), text_generated=text_generated.astype(np.int32),
           min_margin=np.float32(margin))
  return {"family": name, "min_margin": margin, "transformers": transformers.__version__,
          "torch": torch.__version__, "bytes": sum(
              os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))}


@torch.no_grad()
def check_export(export_dir: str, family: str) -> float:
  """Max |logits - golden| of a ``bdiff export`` directory loaded by transformers."""
  if family == "llada":  # its own modeling code, as the fixture was made
    model = refs.llada_from_dir(required("--llada_code"), export_dir)
  else:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        export_dir, attn_implementation="eager", dtype=torch.float32).eval()
  with np.load(os.path.join(OUT, family, "golden.npz")) as g:
    logits = model(torch.tensor(g["input_ids"]).long()).logits.float().numpy()
    return float(np.abs(logits - g["logits"]).max())


# LLaDA's config.json keys (OLMo-style, its configuration_llada.ModelConfig) for a tiny model
# with the released checkpoints' switches: Llama blocks, SwiGLU ("silu" + up_proj), RMSNorm,
# RoPE, an untied head, no biases; GQA and an embedding table padded past vocab_size (as OLMo
# configs pad it) so the converter's handling of both is exercised.
LLADA_MASK = "<|mdm_mask|>"
LLADA_CONFIG = dict(
    d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=128, mlp_ratio=4,
    vocab_size=304, embedding_size=320, activation_type="silu", block_type="llama",
    block_group_size=1, layer_norm_type="rms", layer_norm_with_affine=True,
    bias_for_layer_norm=False, rms_norm_eps=1e-5, rope=True, rope_full_precision=True,
    rope_theta=500000.0, alibi=False, flash_attention=False, attention_layer_norm=False,
    input_emb_norm=False, scale_logits=False, weight_tying=False, include_bias=False,
    include_qkv_bias=False, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
    max_sequence_length=256, init_fn="normal", init_std=0.25, eos_token_id=0, pad_token_id=0,
    architectures=["LLaDAModelLM"])
LLADA_AUTO_MAP = {"AutoConfig": "configuration_llada.LLaDAConfig",
                  "AutoModel": "modeling_llada.LLaDAModelLM",
                  "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}
# LLaDA's reference decode: generate.py's semi-autoregressive low-confidence remasking.
LLADA_DECODE = dict(gen_length=16, steps=16, block_lengths=(8, 16), prompt_lengths=(5, 8))
# Dream's reference decode: diffusion_generate, greedy, one step per generated token.
DREAM_DECODE = dict(gen_length=8, steps=8, algs=("entropy", "maskgit_plus"),
                    prompt_lengths=(5, 8), eps=1e-3)


def text(value: str) -> np.ndarray:
  """A string setting as a numpy unicode scalar (loads without pickle)."""
  return np.array(value)


@torch.no_grad()
def make_llada(tok: Tokenizer, seed: int, code_dir: str) -> dict:
  """LLaDA through its own modeling code: weights, golden logits under its full attention, and
  its reference semi-autoregressive decode (decode.npz)."""
  tok = Tokenizer.from_str(tok.to_str())
  tok.add_special_tokens([LLADA_MASK])
  mask_id = tok.token_to_id(LLADA_MASK)
  model, reference = refs.llada_model(code_dir, dict(LLADA_CONFIG, mask_token_id=mask_id), seed)
  out = os.path.join(OUT, "llada")
  save(model, tok, out, None)
  path = os.path.join(out, "config.json")
  with open(path, encoding="utf-8") as f:
    hf = json.load(f)
  hf.update(auto_map=LLADA_AUTO_MAP, use_cache=False)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2)
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(4, TOKENIZER_VOCAB, size=(2, 12))
  input_ids = np.where(rng.random((2, 12)) < 0.4, mask_id, input_ids)
  logits = model(torch.tensor(input_ids)).logits.float().numpy()  # no attention_mask: full
  np.savez(os.path.join(out, "golden.npz"), input_ids=input_ids.astype(np.int32),
           logits=logits.astype(np.float32), block_size=np.int32(0), mask_id=np.int32(mask_id))
  prompts = [list(rng.integers(4, TOKENIZER_VOCAB, size=k)) for k in LLADA_DECODE["prompt_lengths"]]
  decode = llada_decode(model, reference, prompts, mask_id)
  np.savez(os.path.join(out, "decode.npz"), **decode)
  return {"family": "llada", "mask_id": mask_id, "selection_gap": float(decode["selection_gap"]),
          "argmax_gap": float(decode["argmax_gap"]), "bytes": sum(
              os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))}


def llada_decode(model, reference, prompts: list, mask_id: int) -> dict:
  """LLaDA's ``generate`` (ML-GSAI/LLaDA generate.py) on each prompt alone, at each block
  length: temperature 0, ``low_confidence`` remasking, no classifier-free guidance, steps =
  gen_length (one token per step)."""
  s = LLADA_DECODE
  runs, generated, traces, gaps = [], [], [], []
  for block in s["block_lengths"]:
    for i, prompt in enumerate(prompts):
      x = torch.tensor([prompt])
      rec = refs.Recorder(model)
      final = reference.generate(model, x, steps=s["steps"], gen_length=s["gen_length"],
                                 block_length=block, temperature=0.0, cfg_scale=0.0,
                                 remasking="low_confidence", mask_id=mask_id)
      rec.close()
      per_block = s["steps"] // (s["gen_length"] // block)
      trace, sel_gap, arg_gap = refs.trace_and_gaps(
          rec.calls, final, mask_id, refs.llada_low_confidence,
          lambda step, n=len(prompt), b=block, k=per_block: n + (step // k + 1) * b, len(prompt))
      runs.append((i, block))
      generated.append(final[0, len(prompt):].numpy())
      traces.append(trace)
      gaps.append((sel_gap, arg_gap))
  return dict(
      about=text("LLaDA reference decode: ML-GSAI/LLaDA generate.py generate(model, prompt, "
                 "steps, gen_length, block_length, temperature=0, cfg_scale=0, "
                 "remasking='low_confidence', mask_id), one prompt per call; run r decodes "
                 "prompts[run_prompt[r]] (ids >= 0) with block length run_block_length[r]; "
                 "trace[r, s] is the generated region after step s"),
      prompts=pad(prompts), run_prompt=np.int32([r[0] for r in runs]),
      run_block_length=np.int32([r[1] for r in runs]), generated=np.stack(generated).astype(
          np.int32), trace=np.stack(traces), gen_length=np.int32(s["gen_length"]),
      steps=np.int32(s["steps"]), temperature=np.float32(0.0), cfg_scale=np.float32(0.0),
      remasking=text("low_confidence"), mask_id=np.int32(mask_id),
      selection_gap=np.float32(min(g[0] for g in gaps)),
      argmax_gap=np.float32(min(g[1] for g in gaps)))


@torch.no_grad()
def make_dream_decode(code_dir: str, seed: int) -> dict:
  """Dream's ``diffusion_generate`` (its generation_utils.py) on the Dream fixture, greedy,
  for each confidence rule; the reference model is first checked against golden.npz."""
  out = os.path.join(OUT, "dream")
  model, gen_config = refs.dream_model(code_dir, out)
  with np.load(os.path.join(out, "golden.npz")) as g:
    mask_id = int(g["mask_id"])
    logits = model(torch.tensor(g["input_ids"]).long(), "full", None).logits.numpy()
    check = float(np.abs(logits - g["logits"]).max())
  if check > 1e-4:
    sys.exit(f"Dream's modeling code disagrees with golden.npz by {check:.2e}")
  s = DREAM_DECODE
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(4, TOKENIZER_VOCAB, size=k)) for k in s["prompt_lengths"]]
  runs, generated, traces, gaps = [], [], [], []
  for alg in s["algs"]:
    for i, prompt in enumerate(prompts):
      config = gen_config(mask_token_id=mask_id, pad_token_id=0, eos_token_id=0,
                          max_new_tokens=s["gen_length"], steps=s["steps"], eps=s["eps"],
                          temperature=0.0, top_p=None, top_k=None, alg=alg, alg_temp=0.0)
      rec = refs.Recorder(model)
      final = model.diffusion_generate(torch.tensor([prompt]), generation_config=config)
      rec.close()
      trace, sel_gap, arg_gap = refs.trace_and_gaps(
          rec.calls, final, mask_id, refs.dream_scores(alg), lambda step: final.shape[1],
          len(prompt))
      runs.append((i, alg))
      generated.append(final[0, len(prompt):].numpy())
      traces.append(trace)
      gaps.append((sel_gap, arg_gap))
  np.savez(os.path.join(out, "decode.npz"), **dict(
      about=text("Dream reference decode: Dream generation_utils.py diffusion_generate with "
                 "max_new_tokens=gen_length, steps, eps, temperature=0, top_p=None, top_k=None, "
                 "alg=run_alg[r], alg_temp=0, one prompt per call, no attention mask (full "
                 "attention), logits token-shifted as Dream does; run r decodes "
                 "prompts[run_prompt[r]] (ids >= 0); trace[r, s] is the generated region after "
                 "step s (steps that commit nothing leave it unchanged)"),
      prompts=pad(prompts), run_prompt=np.int32([r[0] for r in runs]),
      run_alg=np.array([r[1] for r in runs]), generated=np.stack(generated).astype(np.int32),
      trace=np.stack(traces), gen_length=np.int32(s["gen_length"]), steps=np.int32(s["steps"]),
      eps=np.float32(s["eps"]), temperature=np.float32(0.0), mask_id=np.int32(mask_id),
      reference_logits_max_diff=np.float32(check),
      selection_gap=np.float32(min(g[0] for g in gaps)),
      argmax_gap=np.float32(min(g[1] for g in gaps))))
  return {"family": "dream_decode", "logits_check": check,
          "selection_gap": min(g[0] for g in gaps), "argmax_gap": min(g[1] for g in gaps)}


def option(name: str) -> str | None:
  return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def main() -> None:
  if "--check_export" in sys.argv:
    export_dir = sys.argv[sys.argv.index("--check_export") + 1]
    family = sys.argv[sys.argv.index("--family") + 1]
    print(json.dumps({"export": export_dir, "family": family,
                      "max_abs_diff": check_export(export_dir, family)}))
    return
  only = set((option("--only") or ",".join(ALL_FIXTURES)).split(","))
  if only - set(ALL_FIXTURES):
    sys.exit(f"--only: unknown {sorted(only - set(ALL_FIXTURES))}; fixtures are {ALL_FIXTURES}")
  tok = make_tokenizer()
  # Fixed seeds: adding a family leaves the others' fixtures unchanged.
  for seed, name in enumerate(sorted(FAMILIES)):
    if name in only:
      info = make_family(name, tok, seed)
      print(json.dumps(info))
      if info["min_margin"] < 1e-3:
        sys.exit(f"{name}: greedy margin {info['min_margin']:.2e} is too small for a stable test")
  for seed, name in enumerate(("fast_dllm_v2", "sdar", "dream"), start=len(FAMILIES)):
    if name in only:
      print(json.dumps(make_block_family(name, tok, seed)))
  seed = len(FAMILIES) + 3
  for name, make in (("llada", lambda: make_llada(tok, seed, required("--llada_code"))),
                     ("dream_decode", lambda: make_dream_decode(required("--dream_code"),
                                                                seed + 1))):
    if name in only:
      info = make()
      print(json.dumps(info))
      if min(info["selection_gap"], info["argmax_gap"]) < 1e-3:
        sys.exit(f"{name}: a reference decision is within 1e-3 of a tie: {info}")


def required(name: str) -> str:
  value = option(name)
  if value is None:
    sys.exit(f"{name} DIR is needed (the family's reference code; see the docstring)")
  return value


ALL_FIXTURES = ("llama", "qwen2", "qwen3", "fast_dllm_v2", "sdar", "dream", "llada",
                "dream_decode")


if __name__ == "__main__":
  main()
