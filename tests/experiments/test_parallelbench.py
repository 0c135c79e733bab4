"""experiments/parallelbench.py: the sweep's settings and its smoke run end to end.

The smoke run decodes with random weights of a tiny model (``restore_params`` is replaced, as
in tests/eval/test_tasks.py): it checks the plumbing (rows, tokens/forward, table, plot), not
accuracy; the learned model's numbers are in docs/parallelbench.md.
"""
import bdiff
from bdiff.config import base_config
from bdiff.data import ByteTokenizer
from bdiff.eval import speed_bench
from experiments import parallelbench


def test_static_settings_give_k_tokens_per_step_over_the_decoded_span():
  static = lambda grid: [(c, k["steps"]) for c, s, k in grid if s == "static"]  # noqa: E731
  block4 = static(parallelbench.settings(4, 20))
  assert block4 == [("static, low confidence", 4), ("static, low confidence", 2),
                    ("static, low confidence", 1), ("static, random", 2)]
  # An MDLM's block holds the whole answer: k tokens per step over max_new_tokens.
  assert [s for c, s in static(parallelbench.settings(52, 20))
          if c == "static, low confidence"] == [20, 10, 5, 3, 2]
  assert parallelbench.settings(4, 20)[0] == ("left to right", "ar", {})


def tiny_cfg():
  cfg = base_config()
  cfg.name = "tiny"
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32")
  cfg.diffusion.block_size = 4
  cfg.sample.update(max_new_tokens=8, batch_size=4, commit="fused")
  cfg.eval.update(num_examples=4, batch_size=4)
  return cfg


def test_smoke_run_writes_table_and_plot(tmp_path, monkeypatch):
  params = speed_bench.random_params(tiny_cfg().model)
  monkeypatch.setattr(bdiff, "restore_params",
                      lambda path: (tiny_cfg(), params, ByteTokenizer()))
  out = tmp_path / "pb.md"
  rows = parallelbench.main(["--workdir", "a", "--out", str(out), "--smoke",
                             "--num_examples", "3"])
  assert [(r["curve"], r["task"]) for r in rows] == [
      (c, t) for c in ("left to right", "factor")
      for t in ("copy", "shuffle")]
  assert all(r["n"] == 3 and 0 <= r["accuracy"] <= 100 for r in rows)
  assert [r["tok/fwd"] for r in rows[:2]] == [1.0] * 2  # fused commit: 1 token per forward
  text = out.read_text()
  assert "Command: `python -m experiments.parallelbench --workdir a" in text
  assert "#### tiny, block 4" in text and "| left to right (-) |" in text
  assert (tmp_path / "pb.png").stat().st_size > 1000
