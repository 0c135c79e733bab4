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

``--check_export DIR --family F`` loads a directory written by ``bdiff export`` with
transformers and compares its logits with F's golden ones (how the exports were checked).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
  model = transformers.AutoModelForCausalLM.from_pretrained(
      export_dir, attn_implementation="eager", dtype=torch.float32).eval()
  with np.load(os.path.join(OUT, family, "golden.npz")) as g:
    logits = model(torch.tensor(g["input_ids"]).long()).logits.float().numpy()
    return float(np.abs(logits - g["logits"]).max())


def main() -> None:
  if "--check_export" in sys.argv:
    export_dir = sys.argv[sys.argv.index("--check_export") + 1]
    family = sys.argv[sys.argv.index("--family") + 1]
    print(json.dumps({"export": export_dir, "family": family,
                      "max_abs_diff": check_export(export_dir, family)}))
    return
  tok = make_tokenizer()
  for seed, name in enumerate(sorted(FAMILIES)):
    info = make_family(name, tok, seed)
    print(json.dumps(info))
    if info["min_margin"] < 1e-3:
      sys.exit(f"{name}: greedy margin {info['min_margin']:.2e} is too small for a stable test")
  # Fixed seeds: adding a family leaves the others' fixtures unchanged.
  for seed, name in enumerate(("fast_dllm_v2", "sdar", "dream"), start=len(FAMILIES)):
    print(json.dumps(make_block_family(name, tok, seed)))


if __name__ == "__main__":
  main()
