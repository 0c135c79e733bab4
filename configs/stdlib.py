"""An 83M-parameter code model on the Python standard library's source (GPU config).

  bdiff train --config configs/stdlib.py --workdir runs/stdlib

Hardware: one H100 (bf16). Expected: a few hundred steps in minutes; see docs/BENCHMARKS.md.
Variant ``configs/stdlib.py:attention_impl=pallas`` (or cudnn, xla).
Byte tokenizer, seq 1024, block 16, 12 layers x 768, GQA 12/4 heads.
"""
from bdiff.config import base_config, parse_variant


def get_config(arg: str | None = None):
  cfg = base_config()
  cfg.name = "stdlib"
  cfg.model.update(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, head_dim=64,
                   mlp_dim=2304, dtype="bfloat16", remat="none", qk_norm=True)
  cfg.diffusion.block_size = 16
  cfg.data.update(source="stdlib")
  cfg.train.update(steps=300, global_batch=32, seq_len=1024, log_every=20, eval_every=0,
                   eval_batches=8, checkpoint_every=0)
  cfg.optim.update(lr=6e-4, warmup_steps=50, grad_clip=1.0)
  cfg.model.update(parse_variant(arg, "configs/stdlib.py",
                                 attention_impl=("xla", "cudnn", "pallas")))
  return cfg
