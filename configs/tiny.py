"""Tiny CPU config: a 0.12M-parameter model on a slice of the stdlib corpus, seconds per run.

  bdiff train --config configs/tiny.py --workdir runs/tiny

Hardware: any CPU. Expected time: ~20 s for 40 steps on 2 cores (compile included).
Variants: ``configs/tiny.py:block_size=4``.
"""
from bdiff.config import base_config, parse_variant


def get_config(arg: str | None = None):
  cfg = base_config()
  cfg.name = "tiny"
  cfg.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192,
                   dtype="float32")
  cfg.diffusion.block_size = 4
  cfg.data.update(source="stdlib", max_docs=40)
  cfg.train.update(steps=40, global_batch=8, seq_len=32, log_every=10, eval_batches=2)
  cfg.optim.update(lr=3e-3, warmup_steps=5)
  cfg.sample.update(max_new_tokens=16, batch_size=4)
  cfg.eval.update(num_examples=8, batch_size=8)
  cfg.diffusion.update(parse_variant(arg, "configs/tiny.py", block_size=()))
  return cfg
