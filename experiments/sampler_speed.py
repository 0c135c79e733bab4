"""Sampler speed: while-loop overhead, and AR vs block diffusion tokens/s at batch 1 and 64.

  python -m experiments.sampler_speed --size small --out results/sampler_speed.md

(a) Loop overhead: ``generate`` wall time / (its forwards x the time of one loop forward of the
    same shape, measured in a compiled loop) for a few strategies.
(c) Tokens/s at batch 1 and ``--big_batch`` for AR decoding against block diffusion with a
    fixed number of tokens per forward, on models of the same size. Weights are random (speed
    does not depend on them, except through adaptive strategies' parallelism, which is why the
    block-diffusion rows use the static schedule: ``tokens/step`` fixed). The AR rows use the
    exact loop at block 1 with a token-shifted model and ``first_token_from_commit``: one
    1-token forward per token, i.e. KV-cached AR decoding.
Compile time is excluded from every rate and reported separately. Writes markdown (machine,
date, tables) to ``--out``. Expected time: ~3 min on 2 CPU cores for ``--size tiny``.
"""
from __future__ import annotations

import argparse
import datetime

import numpy as np

from bdiff.config import base_config
from bdiff.eval import speed_bench
from bdiff.eval.tasks import format_table
from bdiff.sampling import SamplerConfig

SIZES = {  # d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim
    "tiny": (64, 2, 4, 2, 16, 192),
    "small": (256, 4, 4, 2, 64, 768),
    "base": (768, 12, 12, 4, 64, 2048),
}


def make_cfg(size: str, block: int, new_tokens: int, dtype: str, **sample):
  cfg = base_config()
  d, n, h, kv, hd, mlp = SIZES[size]
  cfg.model.update(d_model=d, n_layers=n, n_heads=h, n_kv_heads=kv, head_dim=hd, mlp_dim=mlp,
                   dtype=dtype)
  cfg.diffusion.block_size = block
  cfg.diffusion.token_shift = bool(sample.pop("shift", False))
  cfg.sample.update(max_new_tokens=new_tokens, stop_at_eos=False, **sample)
  return cfg


def prompts(batch: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return (rng.integers(0, vocab, (batch, length)).astype(np.int32),
          np.full((batch,), length, np.int32))


def settings(block: int) -> dict[str, dict]:
  """Named sampler settings: AR baselines and fixed-parallelism block diffusion."""
  out = {
      "AR (block 1, shifted, KV cache)": dict(block=1, strategy="ar", shift=True,
                                              first_token_from_commit=True),
      f"AR order in blocks of {block} (1 tok/step)": dict(block=block, strategy="ar"),
  }
  for tps in (2, 4):
    out[f"BD block {block}, static {tps} tok/step"] = dict(block=block, strategy="static",
                                                          steps=max(block // tps, 1))
    out[f"BD block {block}, static {tps} tok/step, fused"] = dict(
        block=block, strategy="static", steps=max(block // tps, 1), commit="fused")
  return out


def run(args) -> list[dict]:
  rows = []
  for name, s in settings(args.block).items():
    s = dict(s)
    block = s.pop("block")
    cfg = make_cfg(args.size, block, args.new_tokens, args.dtype, **s)
    config = SamplerConfig.from_config(cfg)
    params = speed_bench.random_params(cfg.model)
    for batch in (1, args.big_batch):
      x, lengths = prompts(batch, args.prompt_len, cfg.model.vocab_size)
      r = speed_bench.bench(config, params, x, lengths, repeats=args.repeats)
      rows.append({"setting": name, "batch": batch, **r})
      print(rows[-1], flush=True)
  return with_ratio_to_ar(rows)


def with_ratio_to_ar(rows: list[dict]) -> list[dict]:
  """``vs AR``: tokens/s over the KV-cached AR row's at the same batch, measured in this run,
  with its s.d. from both rows' relative s.d.s (first-order propagation)."""
  ar = {r["batch"]: r for r in rows if r["setting"].startswith("AR (block 1")}
  for r in rows:
    base = ar[r["batch"]]
    ratio = r["tok/s"] / base["tok/s"]
    rel = ((r["± sd"] / r["tok/s"]) ** 2 + (base["± sd"] / base["tok/s"]) ** 2) ** 0.5
    r.update({"vs AR": ratio, "vs AR sd": ratio * rel})
  return rows


def markdown(args, rows) -> str:
  speed_cols = (("setting", "{}"), ("batch", "{}"), ("tok/s", "{:.1f}"), ("± sd", "{:.1f}"),
                ("vs AR", "{:.2f}"), ("vs AR sd", "{:.2f}"), ("tok/fwd", "{:.2f}"),
                ("compile s", "{:.1f}"))
  over_cols = (("setting", "{}"), ("batch", "{}"), ("forwards", "{}"),
               ("ms/forward", "{:.3f}"), ("seconds", "{:.4f}"), ("overhead", "{:.2f}"))
  d, n = SIZES[args.size][:2]
  return "\n".join([
      f"### Sampler speed ({args.size}: d_model {d}, {n} layers, {args.dtype})",
      "",
      f"{datetime.datetime.now().isoformat(timespec='minutes')} on {speed_bench.machine()}. "
      f"Prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, random weights, "
      f"greedy. tok/s = mean ± s.d. over {args.repeats} runs of the compiled loop in this "
      "process (timing noise only). Compile time excluded from rates (column `compile s`).",
      "",
      "Tokens/s (c):",
      "",
      format_table(rows, speed_cols),
      "",
      "Loop overhead (a): `overhead` = generate wall time / (prefill + forwards x one loop "
      "forward of the same shape, timed inside a compiled loop).",
      "",
      format_table(rows, over_cols),
      ""])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--block", type=int, default=16)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--big_batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  rows = run(args)
  speed_bench.write_report(args.out, markdown(args, rows))
  return rows


if __name__ == "__main__":
  main()
