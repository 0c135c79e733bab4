"""Fixtures for the data tests: a tiny HF tokenizer.json built in-memory (no downloads)."""
import pytest


def build_tokenizer_json(path, specials=("<pad>", "<s>", "</s>", "<unk>")) -> str:
  """Trains a WordLevel tokenizer on a few strings and saves it to `path`."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=list(specials))
  tok.train_from_iterator(["the cat sat", "the dog sat on the mat"], trainer)
  tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
  tok.save(str(path))
  return str(path)


@pytest.fixture(name="make_tokenizer_json")
def _make_tokenizer_json():
  return build_tokenizer_json


@pytest.fixture(name="hf_tokenizer_json")
def _hf_tokenizer_json(tmp_path):
  return build_tokenizer_json(tmp_path / "tokenizer.json")
