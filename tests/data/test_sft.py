"""data.source='sft': JSONL conversations -> EOS-padded rows with answer-only masks."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from bdiff import sharding
from bdiff.data import build_data, default_data_config
from bdiff.data import chat
from bdiff.train import loop
from configs import tiny

HF_QWEN3 = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "qwen3")


def write_jsonl(path, n=10):
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      if i % 2:
        rec = {"prompt": f"add {i} 1", "response": str(i + 1)}
      else:
        rec = {"messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": f"twice {i}"},
                            {"role": "assistant", "content": str(2 * i)}]}
      f.write(json.dumps(rec) + "\n")
  return str(path)


def sft_cfg(path, tokenizer="bytes", **kw):
  cfg = default_data_config()
  cfg.update(dict(dict(source="sft", path=path, tokenizer=tokenizer, answer_only=True,
                       valid_fraction=0.2), **kw))
  return cfg


def test_plain_layout_rows_and_masks(tmp_path):
  path = write_jsonl(tmp_path / "sft.jsonl")
  data = build_data(sft_cfg(path), seq_len=32, global_batch=2, seed=0)
  tok = data.tokenizer
  assert data.train.num_tokens == 8 * 32 and data.valid.num_tokens == 2 * 32
  batch = next(data.valid.eval_batches(1))  # records 8 and 9, in order
  row, eligible, answer = batch["tokens"][1], batch["eligible"][1], batch["answer"][1]
  ids = tok.encode("add 9 1") + tok.encode("10") + [tok.eos_id]
  np.testing.assert_array_equal(row[:len(ids)], ids)
  assert (row[len(ids):] == tok.eos_id).all()  # EOS padding
  # the answer is the response and its EOS; training also covers the padding after it
  assert tok.decode(row[answer]) == "10" and answer.sum() == 3
  np.testing.assert_array_equal(eligible, np.arange(32) >= len(tok.encode("add 9 1")))
  assert tok.decode(batch["tokens"][0][~batch["eligible"][0]]) == "be brief\ntwice 8"


def test_chat_layout_with_the_checkpoint_template(tmp_path):
  path = write_jsonl(tmp_path / "sft.jsonl")
  tokenizer = os.path.join(HF_QWEN3, "tokenizer.json")
  data = build_data(sft_cfg(path, tokenizer), seq_len=64, global_batch=2, seed=0)
  tok = data.tokenizer
  template = chat.ChatTemplate.from_tokenizer_config(HF_QWEN3)
  batch = next(data.valid.eval_batches(1))
  row, eligible, answer = batch["tokens"][1], batch["eligible"][1], batch["answer"][1]
  messages = [{"role": "user", "content": "add 9 1"}, {"role": "assistant", "content": "10"}]
  ids, mask = chat.sft_example(template, tok, messages)
  np.testing.assert_array_equal(row[:len(ids)], ids)
  np.testing.assert_array_equal(answer[:len(ids)], mask)
  assert not answer[len(ids):].any() and eligible[len(ids):].all()  # padding: trained, unscored
  im_end = tok.encode("<|im_end|>")
  assert len(im_end) == 1 and im_end[0] in row[answer]  # end of turn is part of the answer
  assert tok.encode(template.render(messages[:1], add_generation_prompt=True)) == \
      list(row[~eligible])


def test_no_chat_template_falls_back_to_plain(tmp_path):
  hf = tmp_path / "hf"
  shutil.copytree(HF_QWEN3, hf)
  (hf / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
  path = write_jsonl(tmp_path / "sft.jsonl")
  data = build_data(sft_cfg(path, str(hf / "tokenizer.json")), seq_len=64, global_batch=2,
                    seed=0)
  row = next(data.valid.eval_batches(1))["tokens"][1]
  tok = data.tokenizer
  ids = tok.encode("add 9 1") + tok.encode("10") + [tok.eos_id]
  np.testing.assert_array_equal(row[:len(ids)], ids)


def test_fingerprint_follows_the_file_and_template(tmp_path):
  path = write_jsonl(tmp_path / "sft.jsonl")
  a = build_data(sft_cfg(path), seq_len=32, global_batch=2, seed=0).fingerprint
  assert build_data(sft_cfg(path), seq_len=32, global_batch=2, seed=0).fingerprint == a
  write_jsonl(tmp_path / "sft.jsonl", n=11)
  assert build_data(sft_cfg(path), seq_len=32, global_batch=2, seed=0).fingerprint != a


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "p"}', r"sft.jsonl:3: expected an object with 'messages'"),
    ('{"prompt": "p", "response": "' + "x" * 40 + '"}',
     r"sft.jsonl:3: the example has 42 tokens, more than train.seq_len=32"),
])
def test_bad_record_names_file_and_line(tmp_path, line, match):
  path = tmp_path / "sft.jsonl"
  write_jsonl(path, n=2)
  with open(path, "a", encoding="utf-8") as f:
    f.write(line + "\n")
  with pytest.raises(ValueError, match=match):
    build_data(sft_cfg(str(path)), seq_len=32, global_batch=2, seed=0)


@pytest.mark.parametrize("key,value,match", [
    ("answer_only", False, "data.source='sft' trains on answers only"),
    ("path", "/nonexistent.jsonl", "data.path '/nonexistent.jsonl' is not a file"),
])
def test_bad_config_names_the_key(tmp_path, key, value, match):
  cfg = sft_cfg(write_jsonl(tmp_path / "sft.jsonl"))
  cfg[key] = value
  with pytest.raises(ValueError, match=match):
    build_data(cfg, seq_len=32, global_batch=2, seed=0)


def test_tiny_training_run_on_sft_data(tmp_path):
  cfg = tiny.get_config()
  cfg.data = sft_cfg(write_jsonl(tmp_path / "sft.jsonl", n=40), valid_fraction=0.25)
  cfg.train.update(steps=3, log_every=1, eval_batches=1, progress=False)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  out = loop.train(cfg, str(tmp_path / "run"), mesh=mesh)
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval_answer_nll"])
  assert 0 < out["eval_answer_tokens"] < out["eval_tokens"]  # padding trained, not scored
