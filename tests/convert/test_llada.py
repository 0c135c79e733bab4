"""LLaDA (ML-GSAI/LLaDA): OLMo-style config keys and tensor names, full bidirectional attention,
no token shift, its in-vocabulary mask; goldens from its own modeling_llada.py and generate.py
(scripts/make_hf_fixtures.py). Also replays the reference decodes of LLaDA and Dream decision
by decision on the converted weights."""
import functools
import json
import os

import jax
import numpy as np
import pytest

from bdiff import convert, masks, runs
from bdiff.convert import families
from bdiff.models import make_model
from tests.convert.conftest import (assert_same_tensors, export_with_configs, fixture_dir,
                                   golden, unallocatable_copy)
from tests.convert.test_errors import edit_tensors
from tests.convert.test_hf_parity import ATOL, RTOL

MASK = 300  # <|mdm_mask|>, added after the 300 tokens of the fixture tokenizer


def llada_config() -> dict:
  with open(os.path.join(fixture_dir("llada"), "config.json"), encoding="utf-8") as f:
    return json.load(f)


def decode_golden(family: str) -> dict:
  with np.load(os.path.join(fixture_dir(family), "decode.npz")) as g:
    return {k: g[k] for k in g.files}


@functools.lru_cache(maxsize=4)
def restored(workdir: str):
  """(jitted apply, params) of a run, restored once."""
  cfg, params, _ = runs.restore_params(workdir)
  return jax.jit(make_model(cfg.model).apply, static_argnums=(3,)), params


def forward(workdir: str, tokens: np.ndarray, mask=None) -> np.ndarray:
  apply, params = restored(workdir)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  return np.asarray(apply({"params": params}, tokens, positions, mask))


def test_config_is_llada_own():
  """Its keys read as bdiff's: head_dim = d_model / n_heads, GQA from n_kv_heads, the head as
  wide as ``embedding_size`` (past ``vocab_size``), full attention, no token shift, its mask."""
  cfg = convert.hf_config(fixture_dir("llada"))
  m = cfg.model
  assert (m.attention, m.mask_token_id, m.vocab_size, m.d_model, m.n_heads, m.n_kv_heads,
          m.head_dim, m.mlp_dim, m.rope_theta, m.norm_eps) == (
              "bidirectional", MASK, 320, 64, 4, 2, 16, 128, 500000.0, 1e-5)
  assert not (m.qkv_bias or m.qk_norm or m.tie_embeddings or m.tied_logit_scale)
  assert not cfg.diffusion.token_shift and cfg.diffusion.block_size == cfg.train.seq_len
  assert (cfg.sample.strategy, cfg.sample.confidence, cfg.sample.block_size, cfg.sample.steps,
          cfg.sample.max_prompt_len) == ("static", "prob", 32, 0, 256)


def test_released_8b_config_reads_as_llama_layers():
  """LLaDA-8B-Base/Instruct's config.json switches and sizes: 32 layers of MHA (head_dim
  128), SwiGLU 12288, RoPE theta 5e5, untied 126464-row head, mask 126336."""
  hf = {**llada_config(), "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
        "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464,
        "mask_token_id": 126336, "max_sequence_length": 4096, "rope_theta": 500000.0,
        "init_device": "meta", "init_fn": "mitchell", "precision": "amp_bf16",
        "torch_dtype": "bfloat16"}
  hf.pop("dtype")
  m = families.model_config_from_hf(hf)
  assert (m.head_dim, m.n_kv_heads, m.mlp_dim, m.vocab_size, m.mask_token_id, m.dtype) == (
      128, 32, 12288, 126464, 126336, "bfloat16")
  assert families.max_positions(hf) == 4096


def test_logits_equal_reference_under_full_attention(converted):
  """Import -> forward under LLaDA's mask (none: every position sees every other) == its
  modeling_llada.py, on inputs that are 40 % [MASK]; a causal mask would not be."""
  g = golden("llada")
  assert (g["input_ids"] == MASK).mean() > 0.2 and int(g["mask_id"]) == MASK
  logits = forward(converted("llada"), g["input_ids"])
  assert logits.shape == g["logits"].shape == (2, 12, 320)
  np.testing.assert_allclose(logits, g["logits"], rtol=RTOL, atol=ATOL)
  causal = forward(converted("llada"), g["input_ids"], masks.block_causal(12, 12, 1))
  assert np.abs(causal - g["logits"]).max() > 1e-2


def test_import_export_import_is_bit_exact(converted, tmp_path):
  """Export writes LLaDA's own names and keys (the checkpoint's other keys kept), the same
  bits, and re-imports to the same parameters."""
  out, again = str(tmp_path / "export"), str(tmp_path / "again")
  hf, original = export_with_configs(converted("llada"), "llada", out)
  assert_same_tensors(fixture_dir("llada"), out)
  assert {k: hf[k] for k in original if k != "dtype"} == {
      k: v for k, v in original.items() if k != "dtype"}
  assert hf["torch_dtype"] == "float32"
  assert (families.model_config_from_hf(hf).to_dict()
          == families.model_config_from_hf(original).to_dict())
  convert.convert_from_hf(out, again, progress=False)
  _, first, _ = runs.restore_params(converted("llada"))
  _, second, _ = runs.restore_params(again)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


@pytest.mark.parametrize("changes,match", [
    (dict(block_type="sequential"), "block_type='sequential'"),
    (dict(activation_type="swiglu"), "activation_type='swiglu'"),
    (dict(layer_norm_type="default"), "layer_norm_type='default'"),
    (dict(weight_tying=True), "weight_tying=True"),
    (dict(include_bias=True), "include_bias=True"),
    (dict(include_qkv_bias=True), "include_qkv_bias=True"),
    (dict(scale_logits=True), "scale_logits=True"),
    (dict(rope=False), "rope=False"),
    (dict(alibi=True), "alibi=True"),
    (dict(attention_layer_norm=True), "attention_layer_norm=True"),
    (dict(input_emb_norm=True), "input_emb_norm=True"),
    (dict(block_group_size=2), "block_group_size=2"),
    (dict(block_group_size=True), "block_group_size=True"),
    (dict(d_model=66), "d_model=66 is not a multiple of n_heads=4"),
    (dict(embedding_size=300), "embedding_size=300 is below vocab_size=304"),
    (dict(n_layers=None), "n_layers=None"),
    (dict(n_kv_heads=2, multi_query_attention=True), "contradicts multi_query_attention"),
    (dict(mask_token_id=320), "mask_token_id=320"),
])
def test_unsupported_config_names_the_key(changes, match):
  with pytest.raises(ValueError, match=match):
    families.model_config_from_hf({**llada_config(), **changes})


def test_llada_defaults_follow_its_model_config():
  """Keys a config leaves out take LLaDA's ModelConfig defaults: no n_kv_heads is MHA, no
  mlp_hidden_size is mlp_ratio * d_model, no embedding_size is vocab_size; a missing
  block_type is its default ``sequential`` (fused q/k/v), which bdiff refuses."""
  hf = llada_config()
  for key in ("n_kv_heads", "mlp_hidden_size", "embedding_size"):
    hf.pop(key)
  m = families.model_config_from_hf(hf)
  assert (m.n_kv_heads, m.mlp_dim, m.vocab_size) == (4, 4 * 64, 304)
  hf.pop("block_type")
  with pytest.raises(ValueError, match="block_type='sequential'"):
    families.model_config_from_hf(hf)


@pytest.fixture
def llada_copy(tmp_path, monkeypatch):
  return unallocatable_copy("llada", tmp_path, monkeypatch)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("model.transformer.blocks.1.up_proj.weight"),
     r"lacks tensor model\.transformer\.blocks\.1\.up_proj\.weight"),
    (lambda t: t.pop("model.transformer.ff_out.weight"),
     r"lacks tensor model\.transformer\.ff_out\.weight"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.weight": np.zeros((64, 64),
                                                                              np.float32)}),
     r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.weight"),
    (lambda t: t.update({"model.transformer.blocks.0.attn_out.weight": np.zeros((64, 32),
                                                                                np.float32)}),
     r"tensor model\.transformer\.blocks\.0\.attn_out\.weight has shape \[64, 32\]"),
])
def test_broken_checkpoint_names_the_tensor(llada_copy, tmp_path, edit, match):
  edit_tensors(llada_copy, edit)
  with pytest.raises(ValueError, match=match):
    convert.convert_from_hf(llada_copy, str(tmp_path / "run"), progress=False)
  assert not os.path.exists(tmp_path / "run" / "config.json")


def test_unsupported_switch_is_refused_before_allocation(llada_copy, tmp_path):
  with open(os.path.join(llada_copy, "config.json"), "w", encoding="utf-8") as f:
    json.dump({**llada_config(), "block_type": "sequential"}, f)
  with pytest.raises(ValueError, match="block_type"):
    convert.convert_from_hf(llada_copy, str(tmp_path / "run"), progress=False)


@pytest.mark.parametrize("changes,match", [
    (dict(tie_embeddings=True), "model.tie_embeddings"),
    (dict(head_dim=32), "model.head_dim"),
    (dict(qk_norm=True), "model.qk_norm"),
    (dict(rope_scaling=dict(type="llama3")), "model.rope_scaling.type"),
])
def test_export_refuses_what_llada_cannot_compute(changes, match):
  """A bidirectional model without q/k/v biases is written as LLaDA; where LLaDA's block
  computes something else, export says which key."""
  model = convert.hf_config(fixture_dir("llada")).model
  model.update(changes)
  with pytest.raises(ValueError, match=match):
    families.hf_config_from_model(model, llada_config(), "float32")


def llada_scores(logits):
  """LLaDA low_confidence: softmax of the logits at the argmax."""
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)).max(-1)


def dream_scores(alg):
  def score(logits):
    shifted = np.concatenate([logits[:1], logits[:-1]])  # Dream: position i - 1 predicts i
    p = np.exp(shifted - shifted.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p.max(-1) if alg == "maskgit_plus" else (p * np.log(p + 1e-10)).sum(-1)
  return score


def replay(workdir, g, run, score, window, argmax_shift):
  """Each recorded reference step, recomputed from bdiff's logits: the positions it committed
  are the highest-scoring candidates and carry bdiff's argmax."""
  prompt = g["prompts"][g["run_prompt"][run]]
  prompt = prompt[prompt >= 0]
  mask, before = int(g["mask_id"]), np.full(int(g["gen_length"]), int(g["mask_id"]))
  for step, after in enumerate(g["trace"][run]):
    logits = forward(workdir, np.concatenate([prompt, before])[None].astype(np.int32))[0]
    gen = slice(len(prompt), None)
    scores, top = score(logits)[gen], argmax_shift(logits).argmax(-1)[gen]
    cand = (before == mask) & (np.arange(len(before)) < window(step))
    committed = cand & (after != mask)
    if committed.any() and (cand & ~committed).any():
      assert scores[committed].min() > scores[cand & ~committed].max(), (run, step)
    np.testing.assert_array_equal(after[committed], top[committed], err_msg=f"{run}/{step}")
    np.testing.assert_array_equal(after[~committed], before[~committed])
    before = after
  np.testing.assert_array_equal(before, g["generated"][run])


def test_llada_reference_decode_replays_on_the_converted_weights(converted):
  """Every step of LLaDA's generate.py (low_confidence, blocks of 8 and 16, one token per
  step) is what bdiff's logits decide; no decision of it was a float tie."""
  g = decode_golden("llada")
  assert (str(g["remasking"]), float(g["temperature"]), int(g["steps"])) == (
      "low_confidence", 0.0, int(g["gen_length"]))
  assert min(g["selection_gap"], g["argmax_gap"]) > 1e-3
  per_block = {8: 8, 16: 16}  # steps per block = steps / (gen_length / block)
  for run, block in enumerate(g["run_block_length"]):
    replay(converted("llada"), g, run, llada_scores,
           lambda step, b=int(block): (step // per_block[b] + 1) * b, lambda x: x)


def test_dream_reference_decode_replays_on_the_converted_weights(converted):
  """Every step of Dream's diffusion_generate (entropy and maskgit_plus, greedy, token shift)
  is what bdiff's logits decide; its first step commits nothing (k = 0 at steps = length)."""
  g = decode_golden("dream")
  assert min(g["selection_gap"], g["argmax_gap"]) > 1e-3
  assert (g["trace"][:, 0] == int(g["mask_id"])).all()
  shift = lambda x: np.concatenate([x[:1], x[:-1]])  # noqa: E731
  for run, alg in enumerate(g["run_alg"]):
    replay(converted("dream"), g, run, dream_scores(str(alg)), lambda step: 1 << 30, shift)


@pytest.mark.parametrize("family,settings", [("llada", dict(run_block_length=16)),
                                             ("dream", dict(run_alg="entropy"))])
def test_converted_sample_defaults_decode_as_the_reference(converted, family, settings):
  """A converted run's own sample section decodes as its family's reference (LLaDA's blocks
  of 32 hold the whole 16-token generation, like its block_length=16 runs; Dream's entropy
  order with idle steps), given only the length."""
  g = decode_golden(family)
  key, value = next(iter(settings.items()))
  cfg, params, tok = runs.restore_params(converted(family))
  cfg.sample.update(max_new_tokens=int(g["gen_length"]), stop_at_eos=False)
  prompts = [p[p >= 0] for p in g["prompts"]]
  out, _ = runs.Sampler(cfg, params, tok).generate_batch(prompts, [0, 1], batch_size=2, width=8)
  for run in np.flatnonzero(g[key] == value):
    np.testing.assert_array_equal(out["tokens"][g["run_prompt"][run], :int(g["gen_length"])],
                                  g["generated"][run], err_msg=f"{family} run {run}")
