"""Host-side sampling: prompt encoding, fixed-shape batches, per-prompt records, JSONL input."""
import json

import pytest

from bdiff.config import base_config
from bdiff.data import ByteTokenizer
from bdiff.eval import speed_bench
from bdiff import runs as run


def tiny_cfg(**sample):
  cfg = base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32")
  cfg.diffusion.block_size = 4
  cfg.sample.update(max_new_tokens=6, batch_size=2, **sample)
  return cfg


@pytest.fixture(scope="module")
def params():
  return speed_bench.random_params(tiny_cfg().model)


def test_encode_prefix_and_truncation(params):
  tok = ByteTokenizer()

  def enc(text, **sample):
    return list(run.Sampler(tiny_cfg(**sample), params, tok).encode(text))

  assert enc("ab") == [tok.eos_id, 97, 98]
  assert enc("ab", prompt_prefix="bos") == [tok.bos_id, 97, 98]
  assert enc("abc", prompt_prefix="none", max_prompt_len=2) == [98, 99]
  with pytest.raises(ValueError, match="prompt_prefix"):
    enc("", prompt_prefix="none")


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
