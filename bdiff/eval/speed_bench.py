"""Sampler speed: tokens/s, forwards, and the while-loop's overhead (``bdiff bench``).

Compilation is always excluded from timings (AOT ``lower().compile()``) and reported apart.
The loop overhead is ``generate`` wall time divided by what its forwards alone cost:
``t_init + iterations x t_forward``, where ``t_forward`` is one loop forward of the same shape
(``generate._forward`` on the loop's initial state, jitted alone) and ``t_init`` the prefill
and setup. A ratio near 1 means strategy logic, cache writes and loop control are cheap.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bdiff import masks
from bdiff import runs
from bdiff.data import tasks as tasks_lib
from bdiff.eval import stats
from bdiff.eval.tasks import format_table
from bdiff.models import make_model
from bdiff.sampling import config as sample_config
from bdiff.sampling import generate as gen
from bdiff.train import checkpointing

COLUMNS = (("setting", "{}"), ("batch", "{}"), ("tok/s", "{:.1f}"), ("± sd", "{:.1f}"),
           ("tok/fwd", "{:.2f}"),
           ("forwards", "{}"), ("ms/forward", "{:.2f}"), ("overhead", "{:.2f}"),
           ("compile s", "{:.1f}"))


def wall_times(fn: Callable, *args, repeats: int = 5) -> list[float]:
  """Wall time of each of ``repeats`` runs of ``fn(*args)`` (already compiled)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def _aot(fn: Callable, *args):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def random_params(model_cfg, seed: int = 0):
  """Random-init params of a model config (speed does not depend on the weights)."""
  model = make_model(model_cfg)
  z = jnp.zeros((1, 8), jnp.int32)
  init = jax.jit(model.init, static_argnums=3)
  return nn.meta.unbox(init(jax.random.key(seed), z, z, masks.causal(8)))["params"]


def _perturb(x: jax.Array, acc: jax.Array) -> jax.Array:
  """``x`` with ``acc * 0`` added to its first element: an in-place one-element update."""
  first = (0,) * x.ndim
  return x.at[first].add((acc * 0.0).astype(x.dtype))


def _forwards(config: gen.SamplerConfig, params, state: gen.LoopState, n: int) -> jax.Array:
  """``n`` loop forwards from ``state`` inside one compiled loop (no per-call dispatch).

  The token buffers and the cache ride in the loop carry, as in ``generate``, and each
  iteration perturbs one element of each by the previous result (times 0.0, which XLA may not
  fold), so no part of the forward is loop invariant and hoisted out. The perturbation costs
  O(1): adding ``acc * 0`` to the whole cache, as this once did, cost a full read and write of
  the cache per forward, which inflated the reference and hid the sampler's own cache traffic.
  The carry also sums every output (logits and K/V), so no part of the forward is dead code.
  """
  def body(_, carry):
    acc, tokens, cache = carry
    tokens = _perturb(tokens, acc)
    if cache is not None:
      cache = tuple(_perturb(c, acc) for c in cache)
    s = state._replace(tokens=tokens, cache=cache)
    outs = jax.tree.leaves(gen.loop_forward(params, s, config=config))
    return acc + sum(jnp.sum(x.astype(jnp.float32)) for x in outs), tokens, cache

  init = (jnp.zeros((), jnp.float32), state.tokens, state.cache)
  return jax.lax.fori_loop(0, n, body, init)[0]


def bench(config: gen.SamplerConfig, params, prompts: np.ndarray, lengths: np.ndarray,
          repeats: int = 5) -> dict:
  """Time ``generate`` on one batch and break it down into forwards.

  Every time is the mean of ``repeats`` runs of the compiled call; ``± sd`` is the sample s.d.
  of tokens/s over those runs (timing noise of this process on this machine).

  Returns:
    ``tokens``, ``seconds``, ``tok/s``, ``± sd``, ``tok/fwd``, ``forwards`` (loop iterations +
    prefill), ``ms/forward``, ``overhead`` (wall / forwards-only time), ``compile s``.
  """
  b = prompts.shape[0]
  rng, ids = jax.random.key(0), np.arange(b, dtype=np.int32)
  args = (params, prompts, rng, lengths, ids)
  run, compile_s = _aot(lambda *a: gen.generate_fn(*a, config=config), *args)
  runs_s = wall_times(run, *args, repeats=repeats)
  seconds = stats.mean_sd(runs_s).mean
  out = jax.tree.map(np.asarray, run(*args))

  init_c, _ = _aot(lambda p, x, r, n, u: gen.initial_state(p, x, r, n, u, config=config),
                   *args)
  state = init_c(*args)
  iterations = int(out["iterations"])
  n_fwd = max(iterations, 1)
  forwards_c, _ = _aot(lambda p, s: _forwards(config, p, s, n_fwd), params, state)
  t_init = stats.mean_sd(wall_times(init_c, *args, repeats=repeats)).mean
  t_fwd = stats.mean_sd(wall_times(forwards_c, params, state, repeats=repeats)).mean / n_fwd
  tokens = int(out["num_tokens"].sum())
  forwards = int((out["nfe_denoise"] + out["nfe_commit"]).sum())
  rate = stats.mean_sd([tokens / s for s in runs_s])
  return {"tokens": tokens, "seconds": seconds, "tok/s": rate.mean, "± sd": rate.sd,
          "tok/fwd": tokens / max(forwards, 1),
          "forwards": iterations + int(out["nfe_prefill"]), "ms/forward": 1e3 * t_fwd,
          "overhead": seconds / (t_init + iterations * t_fwd), "compile s": compile_s}


def task_prompts(tokenizer, task: str, batch: int, seed: int = 0, prefix: str = "eos"
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A right-padded batch of task prompts ``([b, P], lengths [b])``."""
  pre = sample_config.prefix_ids(prefix, tokenizer)
  seqs = [pre + tokenizer.encode(ex.prompt) for ex in tasks_lib.make_examples(task, batch, seed)]
  width = max(len(s) for s in seqs)
  x = np.zeros((batch, width), np.int32)
  for i, s in enumerate(seqs):
    x[i, :len(s)] = s
  return x, np.array([len(s) for s in seqs], np.int32)


def machine() -> str:
  dev = jax.devices()[0]
  return f"{dev.platform}:{getattr(dev, 'device_kind', '?')} x{jax.device_count()} " \
         f"({platform.node()}, {os.cpu_count()} cpus), jax {jax.__version__}"


def write_report(path: str, text: str) -> None:
  """Write an experiment's markdown report (creating its folder) and echo it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


def trained_steps(cfg, workdir: str) -> int:
  """The step of the run's newest checkpoint, the weights ``restore_params`` loads: a run
  stopped early or resumed on a longer schedule differs from its ``train.steps``, which is
  the answer only when there is no checkpoint to read (a stand-in run)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return cfg.train.steps
  step = checkpointing.manager(workdir, create=False).latest_step()
  return cfg.train.steps if step is None else step


def run_header(title: str, cfg, workdir: str, command: str, after: str = ".") -> list[str]:
  """An experiment report's opening lines: title, the trained run it measured, the command,
  and the date and machine (followed by ``after``)."""
  return [f"# {title}", "",
          f"Model: trained {trained_steps(cfg, workdir)} steps on data.source={cfg.data.source} "
          f"(tasks: {cfg.data.tasks}), run `{workdir}`.", "",
          f"Command: `{command}`", "",
          f"{datetime.date.today().isoformat()} on {machine()}{after}"]


def experiment_command(module: str, argv) -> str:
  """The command line that reproduces an experiment (``argv`` None: this process's)."""
  return f"python -m experiments.{module} " + " ".join(
      argv if argv is not None else sys.argv[1:])


def main(cfg, workdir: str) -> list[dict]:
  """``bdiff bench``: the run's configured sampler at batch 1 and ``sample.batch_size``.

  Prompts come from the first of ``eval.tasks``. Prints a table and writes
  ``workdir/bench.json`` (with the machine and date).
  """
  cfg, params, tokenizer = runs.restore_params(workdir, cfg)
  config = gen.SamplerConfig.from_config(cfg, eos_id=tokenizer.eos_id)
  task = cfg.eval.tasks.split(",")[0].strip()
  rows = []
  for batch in sorted({1, cfg.sample.batch_size}):
    x, lengths = task_prompts(tokenizer, task, batch, cfg.eval.seed,
                              sample_config.prompt_prefix(cfg))
    rows.append({"setting": f"{config.strategy.name} B={config.block_size}", "batch": batch,
                 **bench(config, params, x, lengths)})
  print(format_table(rows, COLUMNS))
  print(f"machine: {machine()}; compile time excluded from tok/s")
  record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "rows": rows}
  with open(os.path.join(workdir, "bench.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  return rows
