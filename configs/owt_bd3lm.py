"""BD3-LM on OpenWebText: a ~110M model, seq 1024, block 4/8/16 (arXiv 2503.09573, Table 3).

The GPT-2 tokenizer is supplied by the user as a ``tokenizer.json`` file (nothing is downloaded
at run time); prepare the token store with it, then train with the same file:

  bdiff prepare --inputs owt/*.jsonl --out data/owt --tokenizer gpt2/tokenizer.json
  bdiff train --config configs/owt_bd3lm.py:block_size=16 --workdir runs/owt_b16 \
      --config.data.path=data/owt --config.data.tokenizer=gpt2/tokenizer.json

(``data/owt`` and ``gpt2/tokenizer.json`` are the defaults, so the two overrides are needed only
for other locations.) GPT-2's vocabulary is 50257 tokens; a tokenizer with another vocabulary
fails at build time naming ``model.vocab_size``.

Model: 12 layers, width 768, 12 heads of 64, tied embeddings, as the paper's 110M model. The
paper's network is a DiT-style transformer with a GELU MLP of width 4x768; bdiff's decoder uses a
SwiGLU MLP (three matrices), so ``mlp_dim=1536`` is chosen to land on the same total size:
109.4M parameters (70.8M in the layers + 38.6M in the 50258x768 embedding, MASK row included).

Hardware: a TPU v4-32 / 8xH100 class machine for the paper's 1M steps at batch 512.
Recipe of the BD3-LM paper and kuleshov-group/bd3lms: AdamW lr 3e-4, betas (0.9, 0.999),
no weight decay, 2500 warmup steps then constant lr, gradient clip 1.0, EMA 0.9999, the
log-linear schedule, antithetic per-block t.
"""
from bdiff.config import base_config, parse_variant

GPT2_VOCAB_SIZE = 50257


def get_config(arg: str | None = None):
  block_size = parse_variant(arg, "configs/owt_bd3lm.py", block_size=(4, 8, 16)).get(
      "block_size", 16)
  cfg = base_config()
  cfg.name = f"owt_bd3lm_b{block_size}"
  cfg.model.update(vocab_size=GPT2_VOCAB_SIZE, d_model=768, n_layers=12, n_heads=12,
                   n_kv_heads=12, head_dim=64, mlp_dim=1536, dtype="bfloat16",
                   tie_embeddings=True)
  cfg.diffusion.update(block_size=block_size, schedule="loglinear_bd3", clip_min=1e-3,
                       clip_max=1.0, antithetic=True)
  cfg.data.update(source="tensorstore", path="data/owt", tokenizer="gpt2/tokenizer.json")
  cfg.train.update(steps=1_000_000, global_batch=512, seq_len=1024, log_every=100,
                   eval_every=10_000, eval_batches=100, checkpoint_every=10_000)
  cfg.optim.update(lr=3e-4, warmup_steps=2500, min_lr_ratio=1.0, weight_decay=0.0,
                   grad_clip=1.0, ema_decay=0.9999)
  return cfg
