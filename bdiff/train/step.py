"""The jitted train and eval steps.

One train step = the BD3-LM objective (two-stream forward, per-block noise, SUBS loss; the
details live in :mod:`bdiff.diffusion`) + AdamW + EMA. The per-step RNG is
``fold_in(key(seed), step)``, so a resumed run draws exactly the noise of an uninterrupted one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from bdiff import diffusion
from bdiff.models import Transformer, two_stream_logits
from bdiff import sharding as sharding_lib
from bdiff.train.state import TrainState

_NOISE_STREAM = 0x0D1F  # separates training noise from eval noise and init


def _repeat_rows(a, rows: int):
  """Complementary copies double the batch: repeat per-row inputs to match."""
  if a is None or a.shape[0] == rows:
    return a
  return jnp.concatenate([a] * (rows // a.shape[0]), axis=0)


def make_logits_fn(model: Transformer, params, cfg, segment_ids=None, positions=None):
  """The two-stream forward in the form the diffusion objective calls.

  ``segment_ids`` with ``positions`` train packed documents alone (per-document positions,
  blocks and attention); ``segment_ids`` alone only restrict attention to equal segments.
  """
  dcfg = cfg.diffusion

  def logits_fn(xt, x0, want_clean=False):
    rows = xt.shape[0]
    return two_stream_logits(model, {"params": params}, xt, x0, dcfg.block_size,
                             context_causal=dcfg.context_causal, want_clean=want_clean,
                             segment_ids=_repeat_rows(segment_ids, rows),
                             positions=_repeat_rows(positions, rows))

  return logits_fn


def _packed(batch, cfg):
  """(segment_ids, positions) when packed documents are trained alone, else (None, None).

  ``train.mask_segments``: each document of a packed row gets its own RoPE positions, its own
  blocks (counted from its first token) and attention inside itself only, which equals training
  it alone. Off: a row is one window of the token stream, as in BD3-LM's OpenWebText setup.
  """
  if not cfg.train.mask_segments:
    return None, None
  return batch["segment_ids"], batch["positions"]


def train_step(state: TrainState, batch: dict, *, model, tx, cfg):
  """One optimisation step. Returns (new state, metrics of scalars)."""
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.train.seed), _NOISE_STREAM),
                           state.step)

  segment_ids, positions = _packed(batch, cfg)

  def loss_fn(params):
    logits_fn = make_logits_fn(model, params, cfg, segment_ids, positions)
    return diffusion.training_loss(logits_fn, batch["tokens"], rng, cfg.diffusion,
                                   eligible=batch.get("eligible"), positions=positions,
                                   mask_id=model.mask_id)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    decay = cfg.optim.ema_decay
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(params),
                 finite=jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads)))
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema)
  return new_state, metrics


def eval_step(params, batch: dict, rng, *, model, cfg):
  """Held-out NELBO sums for one batch (unclipped window, ELBO weight).

  With answer-only data (``eligible`` in the batch) this is the NELBO of the answers given
  their prompts, the quantity the tasks are decoded for; the batch's ``answer`` mask (real
  answer tokens and their EOS) is also summed on its own (``scored_*``), padding excluded.
  """
  segment_ids, positions = _packed(batch, cfg)
  logits_fn = make_logits_fn(model, params, cfg, segment_ids, positions)
  return diffusion.nelbo(logits_fn, batch["tokens"], rng, cfg.diffusion,
                         valid=batch.get("eligible"), scored=batch.get("answer"),
                         positions=positions, mask_id=model.mask_id)


def jit_train_step(model, tx, cfg, mesh, state_shardings):
  """``jax.jit`` with explicit in/out shardings and the state donated."""
  batch_sh = sharding_lib.batch_sharding(mesh)
  step = functools.partial(train_step, model=model, tx=tx, cfg=cfg)
  return jax.jit(step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))


def jit_eval_step(model, cfg, mesh, param_shardings):
  batch_sh = sharding_lib.batch_sharding(mesh)
  step = functools.partial(eval_step, model=model, cfg=cfg)
  return jax.jit(step, in_shardings=(param_shardings, batch_sh, sharding_lib.replicated(mesh)),
                 out_shardings=sharding_lib.replicated(mesh))
