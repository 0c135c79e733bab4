"""Hugging Face checkpoint directory -> bdiff run directory (``bdiff convert --from_hf``).

The run holds what ``bdiff train`` reads: ``config.json`` and an Orbax checkpoint (step 0) of the
params alone (no optimizer moments: ``bdiff train`` starts them fresh from these weights), so
``bdiff sample``, ``bdiff eval`` and ``bdiff train`` take it as their own.
The checkpoint's config and tokenizer files are copied into ``RUN/hf/`` (the run's tokenizer
is that copy), with ``RUN/hf/bdiff_convert.json`` recording what export needs to write the
family's format back.

Everything is checked against the safetensors headers first (a missing, extra or misshapen
tensor is a ValueError naming it), and only then is each parameter built shard by shard:
``jax.make_array_from_callback`` asks for each of this host's devices' slices, each read from
the file alone: a device never holds more of a tensor than its shard, and a host (one process
of a multi-host run) reads only what its own devices hold, one parameter at a time.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import jax
import ml_collections
import tqdm

from bdiff import config as config_lib
from bdiff import sharding as sharding_lib
from bdiff.convert import families, layout
from bdiff.models import count_params
from bdiff.convert.safetensors_io import INDEX, CheckpointReader
from bdiff.data import chat
from bdiff.train import checkpointing
from bdiff.train import state as state_lib

HF_SUBDIR = "hf"
META = "bdiff_convert.json"
# Files a checkpoint ships besides its weights: configs, tokenizers, chat templates, and the
# modeling code of trust_remote_code families (SDAR), which an export must carry on.
SIDE_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
# Model keys a user may override at conversion: how bdiff computes, not what the weights are.
FREE_MODEL_KEYS = ("dtype", "scan_layers", "remat", "attention_impl", "pallas_backend",
                   "vocab_pad_multiple")


def _tokenizer_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "tokenizer_config.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def tokenizer_mask_id(hf_dir: str, hf: dict) -> int | None:
  """The id of a block-diffusion family's mask token in the checkpoint's tokenizer (its
  tokenizer_config ``mask_token``, else the family's name for it), None if absent."""
  name = families.family(hf)
  if name not in families.BLOCK_FAMILIES:
    return None
  token = chat.token_text(_tokenizer_config(hf_dir).get("mask_token")
                         or families.BLOCK_FAMILIES[name].mask_token)
  path = os.path.join(hf_dir, "tokenizer.json")
  if not os.path.isfile(path):
    return None
  import tokenizers  # pylint: disable=import-outside-toplevel  (the optional `hf` extra)
  return tokenizers.Tokenizer.from_file(path).token_to_id(token)


def _model_config(hf_dir: str, hf: dict) -> ml_collections.ConfigDict:
  return families.model_config_from_hf(hf, tokenizer_mask_id(hf_dir, hf))


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """The full bdiff config of a HF checkpoint: base config, ``model`` and ``data.tokenizer``
  from the directory, and the family's decoding: AR families get block size 1 with token shift
  (position i's logits predict token i + 1, as they were trained) and greedy ``ar`` decoding;
  block-diffusion families (SDAR) their ``block_size``, no shift, and SDAR's dynamic-threshold
  decoding."""
  hf = families.read_hf_config(hf_dir)
  model = _model_config(hf_dir, hf)
  tokenizer = os.path.join(hf_dir, "tokenizer.json")
  if not os.path.isfile(tokenizer):
    raise ValueError(f"{hf_dir!r} has no tokenizer.json (bdiff reads HF fast tokenizers)")
  name = families.family(hf)
  cfg = config_lib.base_config()
  cfg.name = f"hf-{name}"
  cfg.model.update(model)
  cfg.data.tokenizer = os.path.abspath(tokenizer)
  block_family = families.BLOCK_FAMILIES.get(name)
  # No block size (Dream): one block spans the whole training window.
  cfg.diffusion.block_size = families.block_size(hf) or cfg.train.seq_len
  cfg.diffusion.token_shift = block_family is None or block_family.token_shift
  # An AR head predicts from clean context; adapting it keeps that for block-initial tokens.
  cfg.diffusion.shift_from_clean = block_family is None
  cfg.sample.update(dict(block_family.sample) if block_family else {"strategy": "ar"})
  if block_family and block_family.sub_block:
    cfg.sample.sub_block = math.gcd(block_family.sub_block, cfg.diffusion.block_size)
  cfg.sample.prompt_prefix = "bos" if _tokenizer_config(hf_dir).get("bos_token") else "none"
  # The checkpoint's context, not bdiff's training window (train.seq_len), bounds its prompts.
  cfg.sample.max_prompt_len = families.max_positions(hf)
  return cfg


def _check_model_keys(cfg_model, hf_model) -> None:
  """Overrides may change how bdiff computes, never the architecture the weights need."""
  for key in hf_model:
    if key in FREE_MODEL_KEYS:
      continue
    got, want = cfg_model[key], hf_model[key]
    if isinstance(want, ml_collections.ConfigDict):
      got, want = got.to_dict(), want.to_dict()
    if got != want:
      raise ValueError(f"model.{key}={got!r} differs from the checkpoint's {want!r}; only "
                       f"{list(FREE_MODEL_KEYS)} may be overridden at conversion")


def check_tensors(maps, header: dict, tie_embeddings: bool) -> None:
  """ValueError naming the first missing, unexpected or misshapen tensor."""
  expected = {name: m.hf_shape for m in maps for name in m.hf_names}
  # Some tied checkpoints still store the (identical) head; it is read from the embedding.
  optional = {"lm_head.weight": expected["model.embed_tokens.weight"]} if tie_embeddings else {}
  missing = sorted(set(expected) - set(header))
  extra = sorted(n for n in header if n not in expected and n not in optional
                 and not n.endswith(layout.IGNORABLE_SUFFIXES))
  if missing:
    raise ValueError(f"checkpoint lacks tensor {missing[0]} ({len(missing)} missing, e.g. "
                     f"{missing[:3]}); is config.json the checkpoint's own?")
  if extra:
    raise ValueError(f"checkpoint has unexpected tensor {extra[0]} ({len(extra)} unexpected, "
                     f"e.g. {extra[:3]}): the config does not describe it")
  for name, shape in {**expected, **optional}.items():
    if name in header and tuple(header[name][0]) != tuple(shape):
      raise ValueError(f"tensor {name} has shape {list(header[name][0])}, the config needs "
                       f"{list(shape)}")


def load_params(hf_dir: str, model_cfg, abstract_params, shardings, *, progress: bool = True):
  """(params, checkpoint dtype, number of tensors): the checkpoint's weights as bdiff params
  with the given shardings, each device's slice read from the files alone.

  Every tensor name and shape is checked first: nothing is allocated for a checkpoint that
  does not match ``model_cfg``.
  """
  maps = layout.tensor_maps(abstract_params, model_cfg)
  with CheckpointReader(hf_dir) as reader:
    check_tensors(maps, reader.header, model_cfg.tie_embeddings)
    dtype = reader.dtype()
    leaves = []
    for m in tqdm.tqdm(maps, desc="convert", unit="tensor", disable=not progress):
      leaves.append(jax.make_array_from_callback(
          m.shape, _leaf(shardings, m.path),
          lambda index, m=m: m.read(reader.read, index)))
    tensors = len(reader.header)
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves), dtype, tensors


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _copy_side_files(hf_dir: str, dest: str) -> None:
  """config.json, tokenizer and generation files, chat templates, remote modeling code."""
  os.makedirs(dest, exist_ok=True)
  for name in sorted(os.listdir(hf_dir)):
    path = os.path.join(hf_dir, name)
    if (os.path.isfile(path) and name != INDEX
        and name.endswith(SIDE_FILE_SUFFIXES)):
      shutil.copy2(path, os.path.join(dest, name))


def convert_from_hf(hf_dir: str, workdir: str, cfg=None, *, mesh=None,
                    progress: bool = True) -> dict:
  """Write the run directory ``workdir`` from the HF checkpoint ``hf_dir``.

  Args:
    hf_dir: config.json, model.safetensors (or shards + model.safetensors.index.json),
      tokenizer.json and optionally tokenizer_config.json and other tokenizer files.
    workdir: the new run (must not hold a checkpoint yet).
    cfg: the full bdiff config, default :func:`hf_config`; overrides may change any section
      but ``model`` keys other than how bdiff computes (``FREE_MODEL_KEYS``).
    mesh: default the config's mesh on this host's devices.

  Returns:
    a summary: family, source dtype, number of tensors and parameters, workdir.
  """
  hf = families.read_hf_config(hf_dir)
  cfg = hf_config(hf_dir) if cfg is None else cfg
  _check_model_keys(cfg.model, _model_config(hf_dir, hf))
  if checkpointing.manager(workdir).latest_step() is not None:
    raise ValueError(f"workdir {workdir!r} already holds a checkpoint; convert into a new one")
  cfg = config_lib.from_dict(config_lib.to_dict(cfg))  # a private copy we may edit
  mesh = sharding_lib.make_mesh(cfg.mesh) if mesh is None else mesh
  config_lib.validate(cfg, tuple(mesh.shape.values()))
  _, _, abstract, shardings = state_lib.build(cfg, mesh)
  params, dtype, tensors = load_params(hf_dir, cfg.model, abstract.params, shardings.params,
                                       progress=progress)
  side = os.path.join(workdir, HF_SUBDIR)
  _copy_side_files(hf_dir, side)
  if os.path.abspath(cfg.data.tokenizer) == os.path.abspath(os.path.join(hf_dir,
                                                                         "tokenizer.json")):
    cfg.data.tokenizer = os.path.abspath(os.path.join(side, "tokenizer.json"))
  summary = {"family": families.family(hf), "dtype": dtype, "tensors": tensors,
             "num_params": count_params(abstract.params),
             "source": os.path.abspath(hf_dir), "workdir": os.path.abspath(workdir)}
  with open(os.path.join(side, META), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  _save_run(workdir, params, cfg)
  return summary


def _save_run(workdir: str, params, cfg) -> None:
  """Step 0 holding the weights alone: no optimizer moments (twice the weights again), which
  the first ``bdiff train`` creates fresh (``bdiff.train.loop``), and no EMA copy (inference
  reads the params when a checkpoint has none)."""
  config_dict = config_lib.to_dict(cfg)
  mgr = checkpointing.manager(workdir)
  checkpointing.save(mgr, 0, {"params": params}, config_dict=config_dict,
                     data_position={"seed": cfg.train.seed, "next_step": 0})
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config_dict, f, indent=1)
