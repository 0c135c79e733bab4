"""AR -> block diffusion adaptation vs training from scratch, at equal total tokens.

NBDiff (Tian et al., "From Next-Token to Next-Block: A Principled Adaptation Path for Diffusion
LLMs", arXiv 2512.06776; YuchuanTian/NBDiff) argues that a block diffusion LM is best obtained
by adapting an autoregressive one (AR is block diffusion with block size 1), with a
context-causal mask, an auxiliary AR loss and a block size that grows during adaptation. This
experiment tests that claim at toy scale with bdiff's own pieces, end to end:

1. train an AR model (block size 1) with bdiff;
2. export it to a Hugging Face (Qwen3/Llama) directory with ``bdiff.convert.export_to_hf``
   (``bdiff export``), import it back with ``bdiff.convert.convert_from_hf`` (``bdiff
   convert``), and check the round trip: every HF tensor of the imported run equals the
   original's bit for bit, and exporting the import again writes a byte-identical
   ``model.safetensors``;
3. adapt the imported model to block 4 and block 16, each with and without the NBDiff
   block-size curriculum (``diffusion.block_curriculum``: 2, 4, ... up to the target);
4. train block-4 and block-16 models from scratch with ``AR steps + adaptation steps`` steps,
   so every block model has seen the same number of training tokens;
5. report held-out NELBO (nats/token, mean ± s.d. over ``--draws`` Monte Carlo draws,
   ``bdiff.eval.nelbo``; means within two standard errors are ties) and, on the task suite,
   greedy task accuracy with ``n`` and a Wilson 95 % interval.

Objectives. Every model uses token shift (position i - 1 predicts token i: the HF next-token
convention, which is what makes the AR model exportable and adaptable without moving its
outputs). The AR model is trained on the next-token loss alone: bdiff's auxiliary AR loss on
the clean stream (weight 1) with the masking rate pinned to zero (clip window (0, 0), unit
weights), so its diffusion term is exactly zero. Every block model, adapted or from scratch,
trains the same objective: the BD3-LM NELBO (log-linear schedule, ELBO weights) with NBDiff's
context-causal clean stream and auxiliary AR loss; only the initialisation and the curriculum
differ. The AR row reports the AR model's exact next-token NLL over the same held-out tokens
(the block models' NELBO is an upper bound of their NLL, so the AR row is a reference, not a
competitor).

Suites: ``stdlib`` (the Python standard library corpus, byte tokenizer) for NELBO, which has no
tasks, so task accuracy comes from ``tasks`` (``configs/tasks.py:size=demo``, the reverse
task, answer-only SFT rows) trained the same way; its NELBO is over the answer tokens.

  python -m experiments.adapt_ar --out docs/adapt_ar.md   # ~20 min on 2 busy CPU cores
  python -m experiments.adapt_ar --smoke --out /tmp/adapt_ar.md   # seconds

Hardware: CPU is enough. Noise: evaluation draws only (one training seed per model).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np

import bdiff
from bdiff import convert, masks, runs, sharding
from bdiff.data import task_names
from bdiff.diffusion import losses
from bdiff.eval import nelbo, speed_bench, stats
from bdiff.eval import tasks as eval_tasks
from bdiff.train import loop
from configs import tasks as tasks_config
from configs import tiny

MARKER = "adapt_ar.json"  # marks a workdir this experiment may clear
SUITES = ("stdlib", "tasks")
BLOCKS = (4, 16)
# (label, init, curriculum): the block-model variants, in table order.
VARIANTS = (("adapted", "ar", False), ("adapted + curriculum", "ar", True),
            ("from scratch", "scratch", False))
SIZES = {  # full run; --smoke shrinks everything (see smoke_sizes)
    "stdlib": dict(d_model=64, layers=2, seq_len=64, batch=16, ar_steps=200, adapt_steps=100,
                   eval_batches=8, lr=2e-3, max_docs=300),
    "tasks": dict(d_model=96, layers=3, seq_len=48, batch=16, ar_steps=200, adapt_steps=100,
                  eval_batches=4, lr=3e-3),
}


def smoke_sizes(suite: str) -> dict:
  return dict(SIZES[suite], d_model=32, layers=1, batch=4, ar_steps=3, adapt_steps=4,
              eval_batches=2, seq_len=32 if suite == "stdlib" else 48, max_docs=20)


def base_config(suite: str, size: dict):
  """The suite's data, model and optimiser; the objective is set by ar_/block_config."""
  if suite == "stdlib":
    cfg = tiny.get_config()
    cfg.data.update(source="stdlib", max_docs=size["max_docs"])
  else:
    cfg = tasks_config.get_config("size=demo")
  cfg.name = f"adapt_ar_{suite}"
  d = size["d_model"]
  cfg.model.update(d_model=d, n_layers=size["layers"], n_heads=4, n_kv_heads=2,
                   head_dim=d // 4, mlp_dim=3 * d, qk_norm=True, dtype="float32")
  cfg.train.update(global_batch=size["batch"], seq_len=size["seq_len"], progress=False,
                   eval_batches=size["eval_batches"], checkpoint_every=0)
  cfg.optim.update(lr=size["lr"])
  # Runs get an explicit one-device mesh; -1 lets export and restore (which build the saved
  # config's mesh on every device) work wherever the host has more devices.
  cfg.mesh.update(data=-1, fsdp=1, tensor=1)
  # Every model shares the exported AR model's output alignment (HF next-token), and reads a
  # block's first target from the clean stream, as the sampler predicts it.
  cfg.diffusion.update(token_shift=True, shift_from_clean=True)
  return cfg


def with_steps(cfg, steps: int, seed: int = 0):
  cfg = cfg.copy_and_resolve_references()
  cfg.train.update(steps=steps, seed=seed, log_every=max(steps // 10, 1))
  cfg.optim.warmup_steps = max(steps // 20, 1)
  return cfg


def ar_config(base, steps: int):
  """Block size 1 trained on the next-token loss only: the auxiliary AR loss (clean stream,
  token-causal at block size 1) with nothing masked, so the diffusion term is exactly 0."""
  cfg = with_steps(base, steps)
  cfg.diffusion.update(block_size=1, clip_min=0.0, clip_max=0.0, weighting="none",
                       aux_ar_weight=1.0, context_causal=True)
  cfg.sample.update(strategy="ar")
  return cfg


def curriculum(block: int, steps: int) -> list[list[int]]:
  """Block sizes 2, 4, ... up to ``block``; each stage before the last gets a fifth of the
  steps (the AR model already is the block-1 stage)."""
  sizes = [2 ** k for k in range(1, block.bit_length()) if 2 ** k <= block]
  return [[max(i * steps // 5, i), b] for i, b in enumerate(sizes)]


def block_config(base, block: int, steps: int, staged: bool, seed: int):
  """The block diffusion objective every block model trains (NBDiff-style, see module doc)."""
  cfg = with_steps(base, steps, seed)
  cfg.diffusion.update(block_size=block, aux_ar_weight=1.0, context_causal=True,
                       block_curriculum=curriculum(block, steps) if staged else [])
  # One token per forward in confidence order: decoding adds no parallel-decoding error, so
  # accuracy compares the models themselves.
  cfg.sample.update(strategy="static", steps=block)
  return cfg


def sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def import_config(base, hf_dir: str):
  """``base`` with the model section a HF import derives from ``hf_dir``'s config.json. The
  byte tokenizer has no tokenizer.json, so the run keeps ``data.tokenizer='bytes'``."""
  cfg = base.copy_and_resolve_references()
  cfg.model = convert.model_config_from_hf(convert.families.read_hf_config(hf_dir))
  return cfg


def hf_view(workdir: str, mesh) -> dict:
  """HF tensors of a run as numpy arrays (what export writes)."""
  cfg = runs.run_config(workdir)
  _, params, _ = runs.restore_params(workdir, cfg, mesh=mesh)
  return convert.hf_tensors(params, cfg.model)


def compare_tensors(before: dict, after: dict) -> None:
  """ValueError naming the first tensor whose name, dtype or bits differ."""
  if sorted(before) != sorted(after):
    raise ValueError(f"round trip changed the tensor names: {sorted(before)} vs {sorted(after)}")
  for name, value in before.items():
    if value.dtype != after[name].dtype or value.tobytes() != after[name].tobytes():
      raise ValueError(f"round trip changed tensor {name}")


def round_trip(root: str, ar_cfg, mesh) -> dict:
  """Export the AR run, import it, export the import; ValueError unless all bit-exact."""
  ar_dir, hf_dir = os.path.join(root, "ar"), os.path.join(root, "ar_hf")
  imported, again = os.path.join(root, "ar_imported"), os.path.join(root, "ar_hf_again")
  exported = convert.export_to_hf(ar_dir, hf_dir)
  convert.convert_from_hf(hf_dir, imported, import_config(ar_cfg, hf_dir), mesh=mesh,
                          progress=False)
  convert.export_to_hf(imported, again)
  before = hf_view(ar_dir, mesh)
  compare_tensors(before, hf_view(imported, mesh))
  files = [sha256(os.path.join(d, "model.safetensors")) for d in (hf_dir, again)]
  if files[0] != files[1]:
    raise ValueError("export -> import -> export wrote a different model.safetensors")
  return {"family": exported["family"], "tensors": len(before), "bit_exact": True,
          "sha256": files[0], "elements": int(sum(v.size for v in before.values()))}


def ar_nll(cfg, workdir: str, mesh) -> float:
  """Exact held-out next-token NLL (nats/token) of a token-shifted AR run: the clean forward
  under the token-causal mask, scored on the NELBO's tokens (evaluated ones but the first)."""
  trainer = loop.Trainer.build(cfg, workdir, mesh)
  _, params, _ = runs.restore_params(workdir, trainer.cfg, mesh=mesh)
  total, count = 0.0, 0
  for batch in trainer.data.valid.eval_batches(cfg.train.eval_batches):
    tokens = jnp.asarray(batch["tokens"])
    b, n = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    logits = trainer.model.apply({"params": params}, tokens, pos, masks.block_causal(n, n, 1))
    scored = jnp.asarray(batch.get("eligible", np.ones((b, n), bool)), bool)[:, 1:]
    ce = losses.masked_cross_entropy(logits[:, :-1], tokens[:, 1:], scored)
    total, count = total + float(ce.sum()), count + int(scored.sum())
  return total / count


def task_accuracy(cfg, workdir: str, examples: int) -> dict:
  """Pooled greedy accuracy over the suite's tasks (n, Wilson 95 % interval)."""
  scfg, params, tokenizer = runs.restore_params(workdir, cfg)
  sampler = bdiff.Sampler(scfg, params, tokenizer, use_mesh=False)
  rows = bdiff.evaluate(sampler, task_names(cfg.eval.tasks), examples, cfg.eval.seed,
                        min(examples, cfg.eval.batch_size))
  return eval_tasks.pool(rows)


def prepare_root(root: str) -> None:
  """Start from an empty ``root``; only a directory this experiment made is cleared."""
  if os.path.isdir(root) and os.listdir(root):
    if not os.path.isfile(os.path.join(root, MARKER)):
      raise ValueError(f"--workdir {root} is not empty and holds no adapt_ar run; choose "
                       "another --workdir")
    shutil.rmtree(root)
  os.makedirs(root)
  with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
    json.dump({"started": datetime.datetime.now(datetime.timezone.utc).isoformat()}, f)


def train_block(root: str, base, block: int, variant: tuple, size: dict, mesh) -> tuple:
  """Train one block model; returns (its config, its workdir)."""
  label, init, staged = variant
  name = f"b{block}_{'scratch' if init == 'scratch' else 'adapt'}{'_curr' if staged else ''}"
  workdir = os.path.join(root, name)
  if init == "scratch":  # the imported architecture (untied head), randomly initialised
    cfg = block_config(base, block, size["ar_steps"] + size["adapt_steps"], staged, seed=0)
    bdiff.train(cfg, workdir, mesh=mesh)
  else:  # continue from the imported AR weights with a fresh optimizer and fresh data order
    shutil.copytree(os.path.join(root, "ar_imported"), workdir)
    cfg = block_config(base, block, size["adapt_steps"], staged, seed=1)
    bdiff.train(cfg, workdir, mesh=mesh, allow_config_change=True)
  print(f"[{label}, block {block}: trained in {workdir}]", flush=True)
  return cfg, workdir


def measure(cfg, workdir: str, suite: str, args, mesh) -> dict:
  row = {"nll_draws": [float(d["nll"]) for d in nelbo.nelbo_draws(cfg, workdir, args.draws,
                                                                   mesh=mesh)]}
  if suite == "tasks":
    row["accuracy"] = task_accuracy(cfg, workdir, args.examples)
  return row


def run_suite(suite: str, args, mesh) -> dict:
  """Everything for one suite: AR, round trip, the block models and their measurements."""
  size = smoke_sizes(suite) if args.smoke else dict(SIZES[suite])
  for key in ("ar_steps", "adapt_steps"):
    size[key] = getattr(args, key) or size[key]
  root = os.path.join(args.workdir, suite)
  prepare_root(root)
  base = base_config(suite, size)
  ar_cfg = ar_config(base, size["ar_steps"])
  bdiff.train(ar_cfg, os.path.join(root, "ar"), mesh=mesh)
  trip = round_trip(root, ar_cfg, mesh)
  print(f"[{suite}: export -> import -> export bit-exact: {json.dumps(trip)}]", flush=True)
  imported_base = import_config(base, os.path.join(root, "ar_hf"))
  ar_row = {"nll": ar_nll(ar_cfg, os.path.join(root, "ar"), mesh)}
  if suite == "tasks":
    ar_row["accuracy"] = task_accuracy(ar_cfg, os.path.join(root, "ar"), args.examples)
  rows = []
  for block in args.blocks:
    for variant in VARIANTS:
      cfg, workdir = train_block(root, imported_base, block, variant, size, mesh)
      rows.append({"block": block, "variant": variant[0], **measure(cfg, workdir, suite, args,
                                                                    mesh)})
      print(json.dumps(rows[-1]), flush=True)
  return {"suite": suite, "size": size, "round_trip": trip, "ar": ar_row, "rows": rows,
          "blocks": list(args.blocks)}


def ranking(rows: list[dict]) -> str:
  """Variants of one block size, best NELBO first; ``<`` distinguishable, ``≈`` a tie."""
  ordered = sorted(rows, key=lambda r: stats.mean_sd(r["nll_draws"]).mean)
  text = ordered[0]["variant"]
  for prev, cur in zip(ordered, ordered[1:]):
    a, b = stats.mean_sd(prev["nll_draws"]), stats.mean_sd(cur["nll_draws"])
    text += (" < " if stats.distinguishable(a, b) else " ≈ ") + cur["variant"]
  return text


def paired(draws: list[float], ref: list[float]) -> str:
  """``draws`` minus ``ref`` draw by draw, mean ± s.d.: better/worse beyond two standard errors
  of the mean difference, else a tie. Draw i of every model of one block size uses the same
  diffusion times and masks (seed ``eval.seed + i``), so the differences cancel most of the
  Monte Carlo noise that the unpaired ranking has to carry."""
  m = stats.mean_sd([a - b for a, b in zip(draws, ref)])
  verdict = "tie" if not abs(m.mean) > 2 * m.se else ("better" if m.mean < 0 else "worse")
  return f"{m.mean:+.4f} ± {m.sd:.4f} ({verdict})"


def variant_row(rows: list[dict], block: int, index: int) -> dict:
  return next(r for r in rows if r["block"] == block and r["variant"] == VARIANTS[index][0])


def paired_delta(row: dict, rows: list[dict]) -> str:
  """The row's NELBO against the same block size's from-scratch model, paired over draws."""
  scratch = variant_row(rows, row["block"], -1)
  return "(reference)" if row is scratch else paired(row["nll_draws"], scratch["nll_draws"])


def tokens(size: dict, steps: int) -> str:
  return f"{steps * size['batch'] * size['seq_len'] / 1e3:.0f}k"


def budget_column(size: dict, variant: str) -> str:
  ar, ad = size["ar_steps"], size["adapt_steps"]
  if variant == "from scratch":
    return f"{ar + ad} steps ({tokens(size, ar + ad)} tok)"
  return f"{ar} AR + {ad} adapt ({tokens(size, ar)} + {tokens(size, ad)} tok)"


def accuracy_cells(row: dict) -> str:
  if "accuracy" not in row:
    return ""
  a = row["accuracy"]
  return f" {a['accuracy']:.1f} | {a['n']} | {a['ci95']} |"


def suite_table(res: dict) -> list[str]:
  size, tasks = res["size"], res["suite"] == "tasks"
  head = ("| block | model | training tokens | held-out NLL bound (nats/token), mean ± s.d. | "
          "Δ vs from scratch, paired over draws |")
  rule = "|---|---|---|---|---|"
  if tasks:
    head, rule = head + " accuracy % | n | ci95 |", rule + "---|---|---|"
  ar = res["ar"]
  lines = [head, rule, f"| 1 | AR (exact NLL; exported, re-imported) | "
           f"{size['ar_steps']} steps ({tokens(size, size['ar_steps'])} tok) | "
           f"{ar['nll']:.4f} (exact) | |" + accuracy_cells(ar)]
  for r in res["rows"]:
    m = stats.mean_sd(r["nll_draws"])
    lines.append(f"| {r['block']} | {r['variant']} | {budget_column(size, r['variant'])} | "
                 f"{m.mean:.4f} ± {m.sd:.4f} | {paired_delta(r, res['rows'])} |"
                 + accuracy_cells(r))
  return lines


def suite_section(res: dict) -> str:
  size, trip = res["size"], res["round_trip"]
  lines = [f"### {res['suite']}", "",
           f"Model d={size['d_model']}, {size['layers']} layers, seq {size['seq_len']}, batch "
           f"{size['batch']}; AR {size['ar_steps']} steps, adaptation {size['adapt_steps']} "
           f"steps, from scratch {size['ar_steps'] + size['adapt_steps']} steps. Round trip: "
           f"{trip['family']} export, {trip['tensors']} tensors ({trip['elements']} values) "
           f"bit-exact after import, re-export byte-identical (model.safetensors sha256 "
           f"{trip['sha256'][:16]}...).", ""] + suite_table(res) + [""]
  for block in res["blocks"]:
    rows = [r for r in res["rows"] if r["block"] == block]
    staged, plain = (variant_row(rows, block, i)["nll_draws"] for i in (1, 0))
    lines.append(f"Block {block}, best NELBO first (unpaired; `≈` = within two standard "
                 f"errors): {ranking(rows)}. Curriculum minus no curriculum, paired over "
                 f"draws: {paired(staged, plain)}.")
    lines.append("")
  return "\n".join(lines)


def markdown(results: list[dict], args, command: str, plot_name: str | None) -> str:
  when = datetime.datetime.now(datetime.timezone.utc)
  head = [
      "## AR -> block diffusion adaptation vs from scratch (equal total tokens)", "",
      f"Command: `{command}`", "",
      f"Machine: {speed_bench.machine()}, shared with other jobs. Date: {when:%Y-%m-%d %H:%M} "
      f"UTC. Noise: held-out NELBO is mean ± s.d. over {args.draws} Monte Carlo draws (times "
      "and masks) of one trained model per row; training-seed noise is not included. Task "
      "accuracy: greedy decoding, one token per forward, ci95 = Wilson 95 % interval. Δ: "
      "NELBO minus the from-scratch model's, draw by draw (models of one block size share "
      "each draw's times and masks), mean ± s.d. of the differences; better/worse only "
      "beyond two standard errors, else tie.", "",
      "Adapted = the AR model exported to Hugging Face format, imported back, then trained "
      "at the block size (NBDiff objective: context-causal clean stream, auxiliary AR loss, "
      "token shift); + curriculum = the block size grows 2, 4, ... to the target "
      "(`diffusion.block_curriculum`); from scratch = the same objective and architecture "
      "from a random init, for AR + adaptation steps.", ""]
  body = [suite_section(r) for r in results]
  tail = [f"![NELBO by variant]({plot_name})", ""] if plot_name else []
  return "\n".join(head + body + tail)


def _nelbo_panel(ax, res: dict) -> None:
  for i, (label, _, _) in enumerate(VARIANTS):
    rows = [r for r in res["rows"] if r["variant"] == label]
    ms = [stats.mean_sd(r["nll_draws"]) for r in rows]
    ax.errorbar(np.arange(len(rows)) + (i - 1) * 0.22, [m.mean for m in ms],
                yerr=[m.sd for m in ms], fmt="o", capsize=4, label=label)
  ax.axhline(res["ar"]["nll"], color="gray", ls="--", label="AR (exact NLL)")
  ax.set_xticks(range(len(res["blocks"])), [f"block {b}" for b in res["blocks"]])
  ax.set_ylabel("held-out NLL bound (nats/token), ± s.d.")
  ax.set_title(f"{res['suite']}: NELBO at equal total tokens")
  ax.legend(fontsize=8)


def _accuracy_panel(ax, res: dict) -> None:
  """Accuracy with its Wilson 95 % interval per variant and block size (task suite)."""
  for i, (label, _, _) in enumerate(VARIANTS):
    rows = [r for r in res["rows"] if r["variant"] == label]
    acc = [r["accuracy"] for r in rows]
    lo_hi = [stats.wilson_interval(a["correct"], a["n"]) for a in acc]
    mid = [a["accuracy"] for a in acc]
    err = [[m - 100 * lo for m, (lo, _) in zip(mid, lo_hi)],
           [100 * hi - m for m, (_, hi) in zip(mid, lo_hi)]]
    ax.errorbar(np.arange(len(rows)) + (i - 1) * 0.22, mid, yerr=err, fmt="s", capsize=4,
                label=label)
  ax.axhline(res["ar"]["accuracy"]["accuracy"], color="gray", ls="--", label="AR")
  ax.set_xticks(range(len(res["blocks"])), [f"block {b}" for b in res["blocks"]])
  ax.set_ylabel("accuracy % (Wilson 95 % interval)")
  ax.set_title(f"{res['suite']}: greedy task accuracy")
  ax.legend(fontsize=8)


def plot(results: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = [(_nelbo_panel, r) for r in results] + [
      (_accuracy_panel, r) for r in results if "accuracy" in r["ar"]]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
  for ax, (draw, res) in zip(axes[0], panels):
    draw(ax, res)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suites", nargs="*", choices=SUITES, default=list(SUITES))
  p.add_argument("--blocks", type=int, nargs="*", default=list(BLOCKS))
  p.add_argument("--ar_steps", type=int, default=0, help="0: the suite's default")
  p.add_argument("--adapt_steps", type=int, default=0, help="0: the suite's default")
  p.add_argument("--draws", type=int, default=5, help="Monte Carlo draws of the NELBO")
  p.add_argument("--examples", type=int, default=96, help="task examples (tasks suite)")
  p.add_argument("--smoke", action="store_true", help="tiny sizes: a check that runs in "
                 "seconds, not a result")
  p.add_argument("--workdir", default="runs/adapt_ar")
  p.add_argument("--out", default=None, help="write the markdown report (and a PNG beside it)")
  args = p.parse_args(argv)
  if args.smoke:
    args.draws, args.examples = min(args.draws, 2), min(args.examples, 4)
  mesh = sharding.make_mesh(base_config("stdlib", SIZES["stdlib"]).mesh,
                            devices=jax.devices()[:1])
  results = [run_suite(suite, args, mesh) for suite in args.suites]
  command = "python -m experiments.adapt_ar " + " ".join(sys.argv[1:] if argv is None else argv)
  plot_name = None
  if args.out:
    png = os.path.splitext(args.out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    plot(results, png)
    plot_name = os.path.basename(png)
  text = markdown(results, args, command.strip(), plot_name)
  if args.out:
    speed_bench.write_report(args.out, text)
  else:
    print(text)
  with open(os.path.join(args.workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main()
