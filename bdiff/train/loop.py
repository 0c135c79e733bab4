"""The training loop: build everything from a config, train, evaluate, checkpoint, resume.

Metrics go to ``WORKDIR/metrics.jsonl`` (one JSON object per logged step) and TensorBoard
event files under ``WORKDIR/tb``. A run restarted in the same workdir resumes from the latest
checkpoint and continues exactly: same batches (pure function of (seed, step)), same noise
(``fold_in(seed, step)``), and metrics past the checkpoint are rewritten, not duplicated.
One training at a time holds the workdir, and a resume keeps the run's config unless a change
is allowed (``bdiff.train.rundir``). Reported steps are numbered from 1: "step N" is the
N-th update, the row ``"step": N`` of metrics.jsonl and the checkpoint saved after it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import tqdm

from bdiff import config as config_lib
from bdiff import data as data_lib
from bdiff import diffusion
from bdiff import distributed
from bdiff import flops
from bdiff import sharding
from bdiff.models import Transformer, count_params
from bdiff.train import checkpointing, curriculum, rundir, state as state_lib, step as step_lib

log = logging.getLogger("bdiff.train")


class NonFiniteLossError(FloatingPointError):
  """Raised when a step produced a NaN/Inf loss or gradient; names the step."""


@dataclasses.dataclass
class Trainer:
  """Everything a run needs, built once from the config."""
  cfg: Any
  workdir: str
  mesh: Any
  model: Transformer
  data: Any
  tx: Any
  abstract_state: Any
  state_shardings: Any
  train_step: Callable
  eval_step: Callable

  @classmethod
  def build(cls, cfg, workdir: str, mesh=None) -> "Trainer":
    mesh = sharding.make_mesh(cfg.mesh) if mesh is None else mesh
    # Validation first: a bad value is reported by its config key, not by the data loader.
    config_lib.validate(cfg, tuple(mesh.shape.values()))
    data = data_lib.build_data(cfg.data, cfg.train.seq_len, cfg.train.global_batch,
                               cfg.train.seed, process_index=jax.process_index(),
                               process_count=jax.process_count())
    check_vocab(cfg, data.tokenizer)
    model, tx, abstract, shardings = state_lib.build(cfg, mesh)
    return cls(cfg=cfg, workdir=workdir, mesh=mesh, model=model, data=data, tx=tx,
               abstract_state=abstract, state_shardings=shardings,
               train_step=curriculum.StagedTrainStep(
                   lambda c: step_lib.jit_train_step(model, tx, c, mesh, shardings), cfg),
               eval_step=step_lib.jit_eval_step(model, cfg, mesh, shardings.params))

  def init_or_restore(self, mgr):
    if mgr.latest_step() is None:
      return state_lib.init_state(self.model, self.tx, self.cfg, self.mesh,
                                  self.state_shardings)
    if "opt_state" not in checkpointing.saved_items(self.workdir):
      # Weights alone (bdiff convert): the run starts from them with a fresh optimizer.
      params = checkpointing.restore_subtree(self.workdir, "params", self.abstract_state.params,
                                             self.state_shardings.params)
      log.info("starting from the weights in %s with a fresh optimizer", self.workdir)
      return state_lib.state_from_params(params, self.tx, self.cfg, self.state_shardings)
    state, meta = checkpointing.restore(mgr, self.abstract_state, self.state_shardings)
    log.info("resumed from step %d", meta["step"])
    return state

  def evaluate(self, params) -> dict:
    """Held-out NELBO over ``train.eval_batches`` batches (sums reduced on host).

    ``nll`` is per evaluated token (for SFT rows: the answer and its EOS padding, what
    training optimises). With SFT rows it adds ``answer_nll``: the same draw's terms over the
    answer's real tokens and the one EOS that ends it, padding excluded, and
    ``answer_tokens``, how many such tokens were scored.
    """
    sums = {}
    rng = jax.random.key(self.cfg.eval.seed)
    for i, batch in enumerate(self.data.valid.eval_batches(self.cfg.train.eval_batches)):
      with jax.set_mesh(self.mesh):
        out = self.eval_step(params, sharding.global_batch(batch, self.mesh),
                             jax.random.fold_in(rng, i))
      for key, value in out.items():
        sums[key] = sums.get(key, 0.0) + float(value)
    summary = diffusion.summarize_nelbo(sums["nll_sum"], sums["token_count"])
    summary["tokens"] = sums["token_count"]
    if "scored_nll_sum" in sums:
      summary["answer_nll"] = diffusion.summarize_nelbo(
          sums["scored_nll_sum"], sums["scored_token_count"])["nll"]
      summary["answer_tokens"] = sums["scored_token_count"]
    return summary


def check_vocab(cfg, tokenizer) -> None:
  """The model's output vocabulary must be the data tokenizer's (MASK is the id after it).

  A mismatch is a config error, never silently rewritten: the saved config must describe the
  model that was trained. Only a converted checkpoint (``model.vocab_from_tokenizer=False``)
  may keep a table padded past the tokenizer's ids.
  """
  model_v, tok_v = cfg.model.vocab_size, tokenizer.vocab_size
  padded_ok = not cfg.model.get("vocab_from_tokenizer", True)
  if model_v == tok_v or (padded_ok and model_v > tok_v):
    return
  raise ValueError(
      f"model.vocab_size={model_v} does not match the vocabulary of the data tokenizer "
      f"{tokenizer.name!r} (data.tokenizer={cfg.data.tokenizer!r}), which has {tok_v} tokens: "
      f"set model.vocab_size={tok_v} or use the tokenizer the model was built for")


class MetricsWriter:
  """JSONL (always) + TensorBoard (when tensorboardX is installed), from process 0 only.

  Every process of a multi-host run computes the same (replicated) metrics; one writes them.
  """

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    self.enabled = distributed.is_main_process()
    if not self.enabled:
      return
    _truncate_after(self.path, resume_step)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.tb = SummaryWriter(os.path.join(workdir, "tb"))
    except ImportError:
      log.info("tensorboardX not installed: metrics go to metrics.jsonl only")

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _py(v) for k, v in metrics.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    if self.tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _py(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def _truncate_after(path: str, step: int) -> None:
  """Drop metrics logged after ``step`` (they are recomputed by the resumed run)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(rows)


def _check_finite(pending: list) -> None:
  """``pending`` holds (step, finite) with steps numbered from 1, as in metrics.jsonl."""
  for step, finite in pending:
    if not bool(finite):
      raise NonFiniteLossError(f"non-finite loss or gradient at step {step} (numbered from 1 "
                               f"as in metrics.jsonl); stopping")


def train(cfg, workdir: str, *, mesh=None, on_step: Callable | None = None,
          allow_config_change: bool = False) -> dict:
  """Train (or resume) in ``workdir``. Returns the final metrics including held-out NELBO.

  The config and data are checked before the run directory is created; the directory is then
  locked for the whole run (a second training there is refused, naming the holder). A resume
  whose config differs from the saved one in keys outside ``rundir.HARMLESS`` is refused
  unless ``allow_config_change``; accepted changes go to ``WORKDIR/history.jsonl``.
  ``on_step(step)`` is called after every step (tests use it to simulate a crash).
  """
  trainer = Trainer.build(cfg, workdir, mesh)
  cfg = trainer.cfg
  with rundir.locked(workdir):
    mgr = checkpointing.manager(workdir, max_to_keep=max(cfg.train.keep_checkpoints, 1))
    changes = rundir.on_main_process(lambda: rundir.check_config(
        workdir, config_lib.to_dict(cfg), mgr.latest_step(), allow_config_change))
    state = trainer.init_or_restore(mgr)
    start = int(state.step)
    rundir.record_changes(workdir, start, changes)
    writer = MetricsWriter(workdir, start)
    try:  # closed before any error propagates: its shutdown must not print after the error
      _write_run_info(trainer, start)
      flops_per_step = flops.train_flops_per_step(cfg, count_params(state.params),
                                                  count_params(state.params["embed"]))
      return _run_steps(trainer, state, start, mgr, writer, flops_per_step, on_step)
    finally:
      writer.close()


_clock = time.perf_counter  # the loop's timer (tests substitute a fake clock)


class _Window:
  """Wall time and step count since the last log, excluding the first step of this process.

  The first step compiles the train step, so timing it would report compile time as step time
  (and MFU): the window opens only once that step has finished.
  """

  def __init__(self):
    self.t0, self.steps, self.open = _clock(), 0, False

  def stepped(self, metrics) -> None:
    if self.open:
      self.steps += 1
      return
    jax.block_until_ready(metrics["loss"])
    self.t0, self.open = _clock(), True

  def close(self) -> float | None:
    """Seconds per step in the window (None if it holds no timed step), and restart it."""
    dt = (_clock() - self.t0) / self.steps if self.steps else None
    self.t0, self.steps = _clock(), 0
    return dt

  @contextlib.contextmanager
  def excluded(self):
    """Time spent inside (evaluation, checkpointing) is not step time."""
    t = _clock()
    yield
    self.t0 += _clock() - t


def _throughput(trainer, flops_per_step, dt) -> dict:
  if dt is None:
    return {}
  tokens = trainer.cfg.train.global_batch * trainer.cfg.train.seq_len
  return dict(tokens_per_s=tokens / dt, step_time_s=dt,
              **flops.utilisation(flops_per_step, dt, trainer.mesh.size))


def _run_steps(trainer, state, start, mgr, writer, flops_per_step, on_step) -> dict:
  cfg = trainer.cfg
  show = cfg.train.progress and distributed.is_main_process()
  bar = tqdm.trange(start, cfg.train.steps, initial=start, total=cfg.train.steps,
                    desc="train", disable=not show, dynamic_ncols=True)
  try:  # the bar's last line is drawn before an error propagates, never after it
    return _steps(trainer, state, start, mgr, writer, flops_per_step, on_step, bar)
  finally:
    bar.close()


def _steps(trainer, state, start, mgr, writer, flops_per_step, on_step, bar) -> dict:
  cfg = trainer.cfg
  pending, last, window = [], {}, _Window()
  for step in bar:
    batch = sharding.global_batch(trainer.data.train.batch(step), trainer.mesh)
    with jax.set_mesh(trainer.mesh):
      if trainer.train_step.compiles_at(step):  # a new (curriculum) stage compiles its step:
        jax.block_until_ready(state)            # earlier steps' device time stays step time,
        with window.excluded():                 # the compilation does not
          trainer.train_step.compile(step, state, batch)
      state, metrics = trainer.train_step(state, batch, step)
    pending.append((step + 1, metrics["finite"]))  # "step N" = the N-th update, as logged
    window.stepped(metrics)
    done = step + 1
    if done % cfg.train.log_every == 0 or done == cfg.train.steps:
      _check_finite(pending)
      pending.clear()
      jax.block_until_ready(metrics["loss"])
      last = {k: v for k, v in metrics.items() if k != "finite"}
      last.update(_throughput(trainer, flops_per_step, window.close()))
      with window.excluded():
        _maybe_eval(trainer, state, done, last)
        writer.write(done, last)
      bar.set_postfix(loss=f"{float(last['loss']):.4f}")
    if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 or (
        done == cfg.train.steps):
      _check_finite(pending)
      with window.excluded():
        checkpointing.save(mgr, done, state, config_dict=config_lib.to_dict(cfg),
                           data_position={"seed": cfg.train.seed, "next_step": done})
    if on_step is not None:
      on_step(done)
  if "eval_nll" not in last and start < cfg.train.steps:
    last.update(_eval_metrics(trainer, state))
  return {k: _py(v) for k, v in last.items()}


def _eval_metrics(trainer, state) -> dict:
  params = state.ema_params if state.ema_params is not None else state.params
  summary = trainer.evaluate(params)
  return {f"eval_{k}": v for k, v in summary.items()}


def _maybe_eval(trainer, state, done, last) -> None:
  every = trainer.cfg.train.eval_every
  if (every and done % every == 0) or done == trainer.cfg.train.steps:
    last.update(_eval_metrics(trainer, state))


def _write_run_info(trainer, start: int) -> None:
  if not distributed.is_main_process():
    return
  info = {"config": config_lib.to_dict(trainer.cfg), "data_fingerprint": trainer.data.fingerprint,
          "devices": [str(d) for d in jax.devices()], "mesh": dict(trainer.mesh.shape),
          "process_count": jax.process_count(),
          "resumed_from": start, "num_params": count_params(trainer.abstract_state.params)}
  with open(os.path.join(trainer.workdir, "run.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  with open(os.path.join(trainer.workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(info["config"], f, indent=1)
