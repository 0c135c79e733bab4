"""An AR checkpoint adapted to block diffusion (block size > 1, bdiff's appended [MASK] row)
exports in the block-diffusion family with the same layers: Qwen3 -> SDAR, Qwen2 -> Fast-dLLM
v2. The mask row becomes token ``vocab_size`` of the exported tokenizer, and ``bdiff convert``
of the export gives back the same parameters and logits."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import load_file, save_file

from bdiff import config as config_lib
from bdiff import convert, masks, runs, sharding
from bdiff.convert import families, hf_export
from bdiff.convert.safetensors_io import StreamWriter
from bdiff.models import make_model
from bdiff.train import checkpointing
from bdiff.train import state as state_lib
from tests.convert.conftest import fixture_dir
from tests.convert.test_hf_parity import ATOL, RTOL

# fixture -> (token shift of the adaptation, exported family, block key, mask token text);
# the fixtures' shared tokenizer already has a "<|MASK|>" (id 3), so SDAR's gets its own name.
ADAPTED = {"qwen3": (False, "sdar", "block_size", "<|MASK_300|>"),
           "qwen2": (True, "Fast_dLLM_Qwen", "bd_size", "|<MASK>|")}
BLOCK = 4


def adapted_config(family: str, shift: bool):
  cfg = convert.hf_config(fixture_dir(family))
  cfg.diffusion.update(block_size=BLOCK, token_shift=shift)
  return cfg


def _with_trained_mask_row(run: str) -> None:
  """Give the [MASK] row values (conversion leaves it zero; adaptation trains it)."""
  cfg, params, _ = runs.restore_params(run)
  embed = np.asarray(params["embed"]).copy()
  embed[cfg.model.vocab_size] = np.random.default_rng(0).normal(size=embed.shape[1])
  params = {**params, "embed": jnp.asarray(embed)}
  shutil.rmtree(os.path.join(run, "checkpoints"))
  checkpointing.save(checkpointing.manager(run), 0, {"params": params},
                     config_dict=config_lib.to_dict(cfg), data_position={"next_step": 0})


@pytest.fixture(scope="module", name="round_trip")
def _round_trip(tmp_path_factory):
  """family -> (adapted run, its export, the export converted back, export summary)."""
  done = {}

  def get(family: str):
    if family not in done:
      root = tmp_path_factory.mktemp(f"adapted_{family}")
      run, out, back = (str(root / n) for n in ("run", "export", "back"))
      convert.convert_from_hf(fixture_dir(family), run,
                              adapted_config(family, ADAPTED[family][0]), progress=False)
      _with_trained_mask_row(run)
      summary = convert.export_to_hf(run, out)
      convert.convert_from_hf(out, back, progress=False)
      done[family] = run, out, back, summary
    return done[family]

  return get


def block_logits(cfg, params, tokens):
  n = tokens.shape[1]
  positions = np.broadcast_to(np.arange(n, dtype=np.int32), tokens.shape)
  return np.asarray(make_model(cfg.model).apply({"params": params}, tokens, positions,
                                                masks.block_causal(n, n, BLOCK)))


@pytest.mark.parametrize("family", sorted(ADAPTED))
def test_export_is_the_block_family_with_the_mask_as_a_token(round_trip, family):
  shift, model_type, block_key, token = ADAPTED[family]
  run, out, _, summary = round_trip(family)
  vocab = runs.run_config(run).model.vocab_size
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  assert (summary["family"], summary["mask_token"]) == (model_type, token)
  assert (hf["model_type"], hf[block_key]) == (model_type, BLOCK)
  assert (hf["vocab_size"], hf["mask_token_id"]) == (vocab + 1, vocab)
  assert families.BLOCK_FAMILIES[model_type].token_shift == shift
  tensors = load_file(os.path.join(out, "model.safetensors"))
  assert tensors["model.embed_tokens.weight"].shape[0] == vocab + 1
  tok = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
  assert tok.token_to_id(token) == vocab and tok.encode(f"a{token}b").ids[1] == vocab
  with open(os.path.join(out, "tokenizer_config.json"), encoding="utf-8") as f:
    assert json.load(f)["mask_token"] == token


@pytest.mark.parametrize("family", sorted(ADAPTED))
def test_converting_the_export_back_gives_the_same_params_and_logits(round_trip, family):
  run, _, back, _ = round_trip(family)
  cfg, params, _ = runs.restore_params(run)
  cfg_back, params_back, tok_back = runs.restore_params(back)
  vocab = cfg.model.vocab_size
  assert (cfg_back.model.vocab_size, cfg_back.model.mask_token_id) == (vocab + 1, vocab)
  assert (cfg_back.diffusion.block_size, cfg_back.diffusion.token_shift) == (
      BLOCK, cfg.diffusion.token_shift)
  assert tok_back.encode(ADAPTED[family][3]) == [vocab]  # the run's tokenizer has the mask
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree.leaves(params_back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  tokens = np.random.default_rng(1).integers(4, 300, size=(2, 12)).astype(np.int32)
  tokens[:, -3:] = vocab  # the last block partly [MASK]: the adapted row is read
  logits = block_logits(cfg, params, tokens)
  back_logits = block_logits(cfg_back, params_back, tokens)
  assert back_logits.shape[-1] == vocab + 1  # [MASK] is a token now: one more logit
  np.testing.assert_allclose(back_logits[..., :vocab], logits, rtol=RTOL, atol=ATOL)


def test_an_untied_head_gets_a_zero_row_for_the_mask(tmp_path):
  """A run bdiff trained itself with a HF tokenizer (no imported config) and an untied head:
  the export's lm_head has one more row, zero (bdiff never predicts [MASK])."""
  cfg = config_lib.base_config()
  cfg.model.update(vocab_size=300, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                   mlp_dim=32, qk_norm=True, tie_embeddings=False, dtype="float32")
  cfg.data.tokenizer = os.path.join(fixture_dir("qwen3"), "tokenizer.json")
  cfg.diffusion.update(block_size=BLOCK, token_shift=False)
  cfg.train.seq_len = 16  # the init's input width
  model, tx, _, shardings = state_lib.build(cfg, sharding.make_mesh(cfg.mesh))
  state = state_lib.init_state(model, tx, cfg, sharding.make_mesh(cfg.mesh), shardings)
  run = str(tmp_path / "run")
  checkpointing.save(checkpointing.manager(run), 0, state,
                     config_dict=config_lib.to_dict(cfg), data_position={"next_step": 0})
  out = str(tmp_path / "export")
  assert convert.export_to_hf(run, out)["family"] == "sdar"
  tensors = load_file(os.path.join(out, "model.safetensors"))
  head = np.asarray(state.params["head"]["kernel"]).T
  np.testing.assert_array_equal(tensors["lm_head.weight"][:300], head)
  assert not tensors["lm_head.weight"][300].any()
  assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))


@pytest.mark.parametrize("family, change, message", [
    ("qwen3", dict(token_shift=True), "diffusion.token_shift=True: the sdar format reads "
                                      "without token shift"),
    ("qwen2", dict(token_shift=False), "diffusion.token_shift=False: the Fast_dLLM_Qwen "
                                       "format reads with token shift"),
    ("qwen3", dict(token_shift=False, context_causal=True), "diffusion.context_causal=True"),
    ("llama", dict(token_shift=False), "a Llama model"),
])
def test_no_format_for_what_the_run_computes_is_refused(family, change, message):
  cfg = adapted_config(family, True)
  cfg.diffusion.update(change)
  tokenizer = os.path.join(fixture_dir(family), "tokenizer.json")
  with pytest.raises(ValueError, match=message):
    hf_export.export_plan(cfg, families.read_hf_config(fixture_dir(family)), tokenizer,
                          "float32")


def test_a_tokenizer_holding_the_masks_id_is_refused(tmp_path):
  path = tmp_path / "tokenizer.json"
  shutil.copy(os.path.join(fixture_dir("qwen3"), "tokenizer.json"), path)
  with pytest.raises(ValueError, match="already has a token of id 299"):
    hf_export.write_mask_tokenizer(str(path), str(tmp_path / "none.json"), str(tmp_path), 299,
                                   "<|MASK|>")


def test_the_streamed_safetensors_follow_their_header(tmp_path):
  """Tensors are written one at a time after a header made from their specs, each at its
  offset: the file is the same whatever the order of writing; a tensor the header does not
  expect, or one never written, is an error naming it."""
  specs = [("b", (3,)), ("a", (2,))]
  with pytest.raises(ValueError, match=r"tensor b float32\[2\] is not one the header still "
                                       r"expects \(it has b float32\[3\] unwritten\)"):
    with StreamWriter(str(tmp_path), specs, np.float32) as writer:
      writer.write("b", np.zeros(2, np.float32))
  with pytest.raises(ValueError, match="1 tensors of the header were never written, e.g. b"):
    with StreamWriter(str(tmp_path), specs, np.float32) as writer:
      writer.write("a", np.ones(2, np.float32))
  files, shapes = [], dict(specs)
  for order in ("ab", "ba"):
    with StreamWriter(str(tmp_path), specs, np.float32) as writer:
      for name in order:
        writer.write(name, np.arange(shapes[name][0], dtype=np.float32) + ord(name))
    with open(writer.path, "rb") as f:
      files.append(f.read())
  assert files[0] == files[1]
  np.testing.assert_array_equal(load_file(writer.path)["b"], np.arange(3) + ord("b"))
  # byte for byte what safetensors' own (whole-dict) writer makes of the same tensors
  save_file({n: np.arange(shapes[n][0], dtype=np.float32) + ord(n) for n in "ab"},
            str(tmp_path / "reference.safetensors"), metadata={"format": "pt"})
  assert (tmp_path / "reference.safetensors").read_bytes() == files[0]
