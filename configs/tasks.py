"""Synthetic task suite (copy, reverse, sort, ...): a small model that learns exact answers.

  bdiff train --config configs/tasks.py --workdir runs/tasks
  bdiff eval --workdir runs/tasks --tasks copy,reverse,sort

Hardware: CPU (2 cores: ~15 min for the default 2000 steps) or any accelerator.
Variants: ``configs/tasks.py:block_size=4``; ``size=learned`` (eight ParallelBench-style tasks,
block 4; add ``block_size=52`` for the MDLM; docs/task_model.md); ``size=demo`` is the smaller,
faster setting of ``make demo``: one task (reverse), which a 0.36M-parameter model solves in a
few hundred steps (~2 min on 2 idle cores; docs/demo.md has the measured run).
"""
from bdiff.config import base_config, parse_variant

LEARNED_TASKS = ("copy,reverse,sort,shuffle,insert_index,remove_index,replace_index,"
                 "latin_square")


def get_config(arg: str | None = None):
  variant = parse_variant(arg, "configs/tasks.py", block_size=(), size=("base", "demo", "learned"))
  cfg = base_config()
  cfg.name = "tasks"
  cfg.model.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
                   dtype="float32")
  cfg.diffusion.block_size = 8
  # SFT layout (LLaDA, Nie et al., arXiv 2502.09992, Sec. 2.3): one example per row,
  # right-padded with EOS; prompts are never noised, answers and their padding are, so the
  # model learns to stop.
  cfg.data.update(source="tasks", tasks="copy,reverse,sort", num_task_examples=20000,
                  answer_only=True)
  cfg.train.update(steps=2000, global_batch=32, seq_len=48, log_every=100, eval_batches=4,
                   checkpoint_every=500)
  cfg.optim.update(lr=2e-3, warmup_steps=50)
  cfg.eval.update(tasks="copy,reverse,sort", num_examples=64, batch_size=32)
  cfg.sample.update(max_new_tokens=24, batch_size=32)
  if variant.get("size") == "demo":
    cfg.name = "tasks_demo"
    cfg.model.update(d_model=96, n_layers=3, head_dim=24, mlp_dim=288)
    # Reverse alone is learned in ~300 steps at this size; mixed with copy or replace_random,
    # 600-800 steps reach ~10 % (measured on this CPU), so the demo trains one task.
    cfg.data.update(tasks="reverse", num_task_examples=8000)
    cfg.train.update(steps=400, log_every=50, checkpoint_every=0)
    cfg.optim.update(lr=3e-3)
    cfg.eval.update(tasks="reverse", num_examples=96, batch_size=48)
    # fused commit: the clean re-forward of a finished block rides on the next block's first
    # forward, so one-token-per-step decoding costs exactly one forward per token.
    cfg.sample.update(max_new_tokens=20, batch_size=48, commit="fused")
  if variant.get("size") == "learned":
    # The ParallelBench-style suite for the decoding experiments: the deterministic controls
    # and the tasks with many valid answers where parallel decoding is expected to collapse
    # (shuffle, Latin square). block_size=52 (= seq_len) is the MDLM of the same size.
    # Measured (docs/task_model.md, one token per forward, held-out prompts): 3000 steps give
    # copy 100 % and the other tasks 0-72 %; the same run resumed on longer schedules to 13000
    # steps gives copy, reverse, insert/remove/replace_index 99.7-100 % and sort 96.8 %
    # (shuffle 55 %, Latin square 0 %). The MDLM (block_size=52), resumed likewise to 106000
    # steps, reaches 96.4-100 % on those six tasks in confidence order (sort 92.5 % left to right).
    cfg.name = "tasks_learned"
    cfg.diffusion.block_size = 4
    cfg.data.update(tasks=LEARNED_TASKS, num_task_examples=20000)
    # insert_index's longest example is 48 bytes + EOS.
    cfg.train.update(steps=3000, seq_len=52, checkpoint_every=250, log_every=100)
    cfg.eval.update(tasks=LEARNED_TASKS, num_examples=200, batch_size=100)
    # The longest answer + EOS; fused commit: one token per step is one forward per token.
    cfg.sample.update(max_new_tokens=20, batch_size=100, commit="fused")
  if "block_size" in variant:
    cfg.diffusion.block_size = variant["block_size"]
  return cfg
