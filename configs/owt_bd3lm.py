"""BD3-LM on OpenWebText: 110M params, seq 1024, block 4/8/16 (arXiv 2503.09573, Table 3).

  bdiff prepare --inputs owt/*.jsonl --out data/owt --tokenizer gpt2/tokenizer.json
  bdiff train --config configs/owt_bd3lm.py:block_size=16 --workdir runs/owt_b16 \
      --config.data.path=data/owt

Hardware: a TPU v4-32 / 8xH100 class machine for the paper's 1M steps at batch 512.
Recipe (block_diffusion.md §11): AdamW lr 3e-4, betas (0.9, 0.999), wd 0, warmup 2500, clip
1.0, EMA 0.9999, loglinear schedule, antithetic per-block t. The tensorstore array must be
prepared first (no download happens at run time); GPT-2's vocabulary is 50257.
"""
from bdiff.config import base_config, parse_variant


def get_config(arg: str | None = None):
  block_size = parse_variant(arg, "configs/owt_bd3lm.py", block_size=(4, 8, 16)).get(
      "block_size", 16)
  cfg = base_config()
  cfg.name = f"owt_bd3lm_b{block_size}"
  cfg.model.update(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12,
                   head_dim=64, mlp_dim=3072, dtype="bfloat16", tie_embeddings=True)
  cfg.diffusion.update(block_size=block_size, schedule="loglinear_bd3", clip_min=1e-3,
                       clip_max=1.0, antithetic=True)
  cfg.data.update(source="tensorstore", path="data/owt", tokenizer="bytes")
  cfg.train.update(steps=1_000_000, global_batch=512, seq_len=1024, log_every=100,
                   eval_every=10_000, eval_batches=100, checkpoint_every=10_000)
  cfg.optim.update(lr=3e-4, warmup_steps=2500, min_lr_ratio=1.0, weight_decay=0.0,
                   grad_clip=1.0, ema_decay=0.9999)
  return cfg
