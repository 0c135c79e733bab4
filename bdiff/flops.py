"""FLOP accounting and utilisation (tokens/s, TFLOP/s, MFU).

Counted FLOPs are model FLOPs (PaLM-style: 2 per multiply-add, backward = 2x forward) over the
*unmasked* attention pairs, so sparse masks are not credited for work they skip.
"""
from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip, from the vendors' spec sheets.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def bd3_attended_keys_per_query(seq_len: int, block_size: int) -> float:
  """Mean allowed keys per query of the two-stream mask over 2n tokens.

  Allowed pairs: noisy-noisy n*B, noisy->clean B^2 K(K-1)/2, clean-clean B^2 K(K+1)/2, i.e.
  n*B + n^2 in total over 2n queries.
  """
  return (seq_len * block_size + seq_len ** 2) / (2 * seq_len)


def train_flops_per_step(cfg, num_params: int) -> float:
  """Model FLOPs of one two-stream training step (forward + backward)."""
  m, n = cfg.model, cfg.train.seq_len
  embed = (m.vocab_size + 1) * m.d_model
  dense_params = num_params - embed  # embedding lookups are gathers, not matmuls
  tokens = 2 * n  # noisy + clean stream
  matmul = 2 * dense_params * tokens
  head = 2 * m.d_model * m.vocab_size * n  # logits of the noisy half only
  keys = bd3_attended_keys_per_query(n, cfg.diffusion.block_size)
  attn = 4 * m.n_layers * m.n_heads * m.head_dim * keys * tokens
  fwd = matmul + head + attn
  return 3.0 * fwd * cfg.train.global_batch


def peak_flops(device=None) -> float | None:
  """Peak dense bf16 FLOP/s of one device, or None where unknown (CPU)."""
  device = jax.devices()[0] if device is None else device
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def utilisation(flops_per_step: float, step_time_s: float) -> dict:
  """TFLOP/s across all devices and MFU where the peak is known."""
  tflops = flops_per_step / step_time_s / 1e12
  out = {"tflops": tflops}
  peak = peak_flops()
  if peak is not None:
    out["mfu"] = flops_per_step / step_time_s / (peak * jax.device_count())
  return out
