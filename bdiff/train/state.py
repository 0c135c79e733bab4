"""Train state, optimizer and their shardings.

The state is a plain pytree (``flax.struct``) of ``step``, fp32 ``params`` (a nested dict),
optax ``opt_state`` and optional ``ema_params``. Shardings are derived once from the logical
axis names of an abstract (``eval_shape``) initialisation, so nothing is allocated twice.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from bdiff import masks as masks_lib
from bdiff.models import Transformer, make_model
from bdiff import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to ``optim.lr`` then cosine decay to ``lr * optim.min_lr_ratio``."""
  warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=optim_cfg.lr * optim_cfg.min_lr_ratio)


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping (inside the jitted step, so it sees sharded grads)."""
  tx = optax.adamw(learning_rate_schedule(optim_cfg, total_steps), b1=optim_cfg.b1,
                   b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
  if optim_cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), tx)
  return tx


def _init_inputs(seq_len: int, block_size: int):
  tokens = jnp.zeros((1, 2 * seq_len), jnp.int32)
  positions = jnp.zeros((1, 2 * seq_len), jnp.int32)
  return tokens, positions, masks_lib.BD3Training(seq_len, block_size)


def _boxed_state(model: Transformer, tx, rng, seq_len, block_size, use_ema: bool):
  variables = model.init(rng, *_init_inputs(seq_len, block_size))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=params if use_ema else None)


def state_shardings(model, tx, cfg, mesh):
  """(abstract unboxed state, NamedSharding tree) for the configured model and mesh."""
  boxed = jax.eval_shape(
      lambda r: _boxed_state(model, tx, r, cfg.train.seq_len, cfg.diffusion.block_size,
                             cfg.optim.ema_decay > 0), jax.random.key(0))
  shardings = sharding_lib.logical_shardings(boxed, mesh, cfg.mesh)
  abstract = nn.meta.unbox(boxed)
  return abstract, shardings


def build(cfg, mesh):
  """(model, optimizer, abstract unboxed state, shardings) of a config on a mesh.

  What training and inference restore both need; nothing is allocated.
  """
  model = make_model(cfg.model)
  tx = make_optimizer(cfg.optim, cfg.train.steps)
  abstract, shardings = state_shardings(model, tx, cfg, mesh)
  return model, tx, abstract, shardings


def init_state(model, tx, cfg, mesh, shardings) -> TrainState:
  """Initialise directly into the target shardings (no host-side full copy)."""
  rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 0x5EED)

  def init(r):
    return nn.meta.unbox(_boxed_state(model, tx, r, cfg.train.seq_len,
                                      cfg.diffusion.block_size, cfg.optim.ema_decay > 0))

  with jax.set_mesh(mesh):
    return jax.jit(init, out_shardings=shardings)(rng)


def state_from_params(params, tx, cfg, shardings) -> TrainState:
  """Step 0 of a run starting from given (sharded) weights: fresh optimizer moments, EMA =
  the weights when configured (a converted checkpoint's first ``bdiff train``)."""
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  ema = params if cfg.optim.ema_decay > 0 else None
  return TrainState(step=step, params=params, opt_state=opt_state, ema_params=ema)
