"""FLOP accounting and utilisation (tokens/s, TFLOP/s, MFU).

Counted FLOPs are model FLOPs in the PaLM convention (Chowdhery et al. 2022, appendix B):
2 per multiply-add, backward = 2x forward, so a step costs 3x its forward. Attention is counted
over the pairs the structural mask allows, so a sparse mask is not credited for work it skips
(per-document masking of packed rows skips more; that saving is not counted).
"""
from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip, from the vendors' spec sheets.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def bd3_attended_keys_per_query(seq_len: int, block_size: int,
                                context_causal: bool = False) -> float:
  """Mean allowed keys per query of the two-stream mask over 2n tokens.

  Allowed pairs: noisy-noisy n*B, noisy->clean B^2 K(K-1)/2 and clean-clean B^2 K(K+1)/2
  (block causal, n*B + n^2 in all) or n(n+1)/2 (token causal, NBDiff).
  """
  n, b = seq_len, block_size
  k = n // b
  clean = n * (n + 1) / 2 if context_causal else b * b * k * (k + 1) / 2
  return (n * b + b * b * k * (k - 1) / 2 + clean) / (2 * n)


def head_params(model_cfg) -> int:
  """Parameters of a separate output head (0 when it is tied to the embedding)."""
  return 0 if model_cfg.tie_embeddings else model_cfg.d_model * model_cfg.vocab_size


def train_flops_per_step(cfg, num_params: int, embed_params: int) -> float:
  """Model FLOPs of one two-stream training step (forward + backward) over the global batch.

  The body (every weight but the embedding table and the head) runs on both streams, 2n
  tokens; the head runs on the noisy stream only (both streams with the auxiliary AR loss);
  the embedding is a gather, not a matmul. Complementary masking doubles the batch.

  Args:
    cfg: the run config.
    num_params: all parameters of the model.
    embed_params: parameters of its embedding table (whatever rows it holds: [MASK], padding).
  """
  m, d, n = cfg.model, cfg.diffusion, cfg.train.seq_len
  body_params = num_params - embed_params - head_params(m)
  tokens = 2 * n  # noisy + clean stream
  body = 2 * body_params * tokens
  head_tokens = 2 * n if d.aux_ar_weight > 0 else n
  head = 2 * m.d_model * m.vocab_size * head_tokens
  keys = bd3_attended_keys_per_query(n, d.block_size, d.context_causal)
  attn = 4 * m.n_layers * m.n_heads * m.head_dim * keys * tokens
  rows = cfg.train.global_batch * (2 if d.complementary_mask else 1)
  return 3.0 * (body + head + attn) * rows


def peak_flops(device=None) -> float | None:
  """Peak dense bf16 FLOP/s of one device, or None where unknown (CPU)."""
  device = jax.devices()[0] if device is None else device
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def utilisation(flops_per_step: float, step_time_s: float, num_devices: int,
                device=None) -> dict:
  """TFLOP/s of the step, and MFU over the ``num_devices`` chips that ran it (its mesh).

  MFU needs the chip's peak (``device``, default the first device); it is omitted where the
  peak is unknown (CPU).
  """
  if num_devices <= 0:
    raise ValueError(f"num_devices must be positive, got {num_devices}")
  out = {"tflops": flops_per_step / step_time_s / 1e12}
  peak = peak_flops(device)
  if peak is not None:
    out["mfu"] = flops_per_step / step_time_s / (peak * num_devices)
  return out
