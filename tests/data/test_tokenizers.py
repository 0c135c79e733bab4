"""Tests for bdiff.data.tokenizers."""
import pytest

from bdiff.data.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer


def test_byte_tokenizer_roundtrip_and_specials():
  tok = ByteTokenizer()
  text = "déf f(x):\n  return x  # ✓"
  ids = tok.encode(text)
  assert ids == list(text.encode("utf-8"))
  assert tok.encode_array(text).tolist() == ids
  assert tok.decode(ids) == text
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (256, 257, 258, 259)
  # Specials and the model-owned [MASK] (= vocab_size) decode to nothing.
  assert tok.decode([256] + ids + [257, 258, tok.vocab_size]) == text


def test_byte_decode_replaces_invalid_utf8():
  tok = ByteTokenizer()
  partial = tok.encode("é")[:1]
  assert tok.decode(partial + tok.encode("ok")) == "\ufffdok"


def test_hf_tokenizer_from_built_json(hf_tokenizer_json):
  path = hf_tokenizer_json
  tok = get_tokenizer(path)
  assert isinstance(tok, HFTokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  ids = tok.encode("the cat sat on the mat")
  assert len(ids) == 6 and tok.encode_array("the cat").tolist() == ids[:2]
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.vocab_size]) == (
      "the cat sat on the mat")


def test_hf_tokenizer_overrides_and_missing_eos(tmp_path, make_tokenizer_json):
  path = make_tokenizer_json(tmp_path / "t.json", specials=("<unk>", "[END]"))
  with pytest.raises(ValueError, match="eos_token"):
    HFTokenizer(path)
  tok = HFTokenizer(path, eos_token="[END]")
  assert tok.eos_id == 1 and tok.bos_id == tok.pad_id == tok.eos_id
  with pytest.raises(ValueError, match="pad_token"):
    HFTokenizer(path, eos_token="[END]", pad_token="<nope>")


def test_get_tokenizer_rejects_unknown(tmp_path):
  assert isinstance(get_tokenizer("bytes"), ByteTokenizer)
  with pytest.raises(ValueError, match="tokenizer"):
    get_tokenizer("gpt2")
  with pytest.raises(ValueError, match="tokenizer path"):
    get_tokenizer(str(tmp_path / "missing.json"))
