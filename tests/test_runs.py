"""Host-side sampling: prompt layout and limit, batch shapes, per-prompt records, JSONL input."""
import json

import numpy as np
import pytest

from bdiff.config import base_config
from bdiff.data import ByteTokenizer
from bdiff.eval import speed_bench
from bdiff.eval import tasks as eval_tasks
from bdiff import runs as run


def tiny_cfg(**sample):
  cfg = base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32")
  cfg.diffusion.block_size = 4
  cfg.sample.update(max_new_tokens=6, batch_size=2)
  cfg.sample.update(**sample)
  return cfg


def task_cfg(**sample):
  """The task suite's SFT layout: every training row starts with the prompt itself."""
  cfg = tiny_cfg(**sample)
  cfg.data.update(source="tasks", tasks="copy", answer_only=True)
  cfg.train.seq_len = 48
  return cfg


@pytest.fixture(scope="module")
def params():
  return speed_bench.random_params(tiny_cfg().model)


def test_encode_prefix_follows_the_training_layout(params):
  tok = ByteTokenizer()

  def enc(text, cfg):
    return list(run.Sampler(cfg, params, tok).encode(text))

  assert enc("ab", tiny_cfg()) == [tok.eos_id, 97, 98]  # packed documents follow an EOS
  assert enc("ab", task_cfg()) == [97, 98]              # SFT rows start with the prompt
  segmented = tiny_cfg()
  segmented.train.mask_segments = True                  # the EOS before a document is hidden
  assert enc("ab", segmented) == [97, 98]
  assert enc("ab", task_cfg(prompt_prefix="bos")) == [tok.bos_id, 97, 98]  # explicit wins
  assert enc("ab", tiny_cfg(prompt_prefix="none")) == [97, 98]
  with pytest.raises(ValueError, match="prompt_prefix"):
    enc("", task_cfg())


def test_eval_defaults_equal_the_training_layout(params, monkeypatch, tmp_path):
  """``bdiff eval`` with the saved config's defaults decodes as with the layout set by hand."""
  monkeypatch.setattr(run, "restore_params",
                      lambda workdir, cfg=None, **kw: (cfg, params, ByteTokenizer()))
  cfg_by_default, cfg_explicit = task_cfg(), task_cfg(prompt_prefix="none")
  for cfg in (cfg_by_default, cfg_explicit):
    cfg.eval.update(tasks="copy", num_examples=4, batch_size=4)
  timing = ("tok/s", "seconds")
  rows = [[{k: v for k, v in r.items() if k not in timing}
           for r in eval_tasks.main(cfg, str(tmp_path))]
          for cfg in (cfg_by_default, cfg_explicit)]
  assert rows[0] == rows[1]
  prompts = ["copy: a b c d =", "copy: x y =", "copy: k =", "copy: p q r ="]

  def tokens(cfg):
    return [r["tokens"] for r in run.Sampler(cfg, params, ByteTokenizer()).sample(prompts)]

  assert tokens(cfg_by_default) == tokens(cfg_explicit)
  assert tokens(cfg_by_default) != tokens(task_cfg(prompt_prefix="eos"))  # the layout matters


def test_prompts_over_the_trained_context_are_truncated_with_a_warning(params):
  cfg = tiny_cfg(prompt_prefix="none")
  cfg.train.seq_len = 16
  sampler = run.Sampler(cfg, params, ByteTokenizer())
  assert sampler.max_prompt_len == 16
  long = "x" * 30 + "abcdefghijklmnop"
  with pytest.warns(UserWarning, match=r"limit of 16 tokens \(train.seq_len"):
    ids = sampler.encode(long)
  assert bytes(ids.tolist()).decode() == "abcdefghijklmnop"
  with pytest.warns(UserWarning, match="1 of 2 prompts"):
    sampler.sample([long, "short"])
  explicit = run.Sampler(tiny_cfg(prompt_prefix="none", max_prompt_len=40), params,
                         ByteTokenizer())
  with pytest.warns(UserWarning, match=r"limit of 40 tokens \(sample.max_prompt_len"):
    assert len(explicit.encode(long)) == 40


def test_padded_batch_never_pads_past_the_work():
  assert run.padded_batch(3, 20000, shards=8) == 8
  assert run.padded_batch(3, 20000) == 4
  assert run.padded_batch(9, 32, shards=2) == 16
  assert run.padded_batch(5, 6, shards=4) == 6     # capped at the full batch shape
  assert run.padded_batch(32, 32, shards=8) == 32  # a full batch keeps its fixed shape


def test_few_prompts_compile_a_small_batch(params):
  sampler = run.Sampler(tiny_cfg(batch_size=20000), params, ByteTokenizer())
  recs = sampler.sample(["a", "bb", "ccc"])
  assert len(recs) == 3
  assert [b for b, _ in sampler.compiled_shapes] == [8]  # 3 rows -> 4 -> 8 data shards
  # Same outputs as a batch size that fits (row outputs do not depend on the batch).
  small = run.Sampler(tiny_cfg(batch_size=3), params, ByteTokenizer()).sample(["a", "bb", "ccc"])
  assert [r["tokens"] for r in recs] == [r["tokens"] for r in small]


def test_sample_records_in_order_and_batch_independent(params):
  sampler = run.Sampler(tiny_cfg(temperature=1.0), params, ByteTokenizer())
  texts = ["hello", "a", "longer prompt here"]
  recs = sampler.sample(texts)  # batches of 2: the last one padded
  assert [r["prompt"] for r in recs] == texts
  for r in recs:
    assert r["num_tokens"] == len(r["tokens"]) and 1 <= r["num_tokens"] <= 6
    assert r["num_forwards"] == r["nfe_denoise"] + r["nfe_commit"] > 0
    assert r["seconds"] > 0 and isinstance(r["text"], str)
    assert all(0 <= t < 259 for t in r["tokens"])
  # Prompt i keys its RNG with id i: sampling prompt 2 on its own (first_id=2) agrees.
  again = sampler.sample(texts[2:], first_id=2)
  assert again[0]["tokens"] == recs[2]["tokens"]
  assert sampler.compile_seconds > 0
  assert len(sampler._compiled) == 1  # pylint: disable=protected-access


def test_read_prompts(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"prompt": "x"}) + "\n\n" + json.dumps({"prompt": "y"}) + "\n")
  assert run.read_prompts(str(path)) == ["x", "y"]
  path.write_text(json.dumps({"text": "x"}) + "\n")
  with pytest.raises(ValueError, match="prompt"):
    run.read_prompts(str(path))
