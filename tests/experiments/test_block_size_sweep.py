"""Block-size sweep report: NELBO as mean ± s.d. over draws, ties reported as ties."""
import argparse
import json

from experiments import block_size_sweep as sweep

ARGS = argparse.Namespace(steps=10, batch=4, seq_len=64, d_model=32, layers=1, max_docs=5,
                          eval_batches=2, draws=5)


def rows():
  # The one-draw ranking of an earlier sweep (B=16 2.196 vs MDLM 2.216 nats) under draw noise.
  return [{"block_size": 1, "nll_draws": [1.461] * 5, "seconds": 1.0},
          {"block_size": 4, "nll_draws": [2.07, 2.05, 2.09, 2.06, 2.08], "seconds": 1.0},
          {"block_size": 16, "nll_draws": [2.196, 2.17, 2.225, 2.201, 2.188], "seconds": 1.0},
          {"block_size": 64, "nll_draws": [2.216, 2.24, 2.19, 2.221, 2.205], "seconds": 1.0}]


def test_ranking_reports_close_means_as_a_tie():
  assert sweep.ranking(rows(), 64) == "1 (AR) < 4 < 16 ≈ 64 (MDLM)"


def test_markdown_states_draws_spread_and_command():
  text = sweep.markdown(rows(), ARGS, "python -m experiments.block_size_sweep --draws 5")
  assert "mean ± s.d. over 5 Monte Carlo draws" in text
  assert "| 1 (AR) | 1.4610 ± 0 (deterministic) |" in text
  assert "| 16 | 2.1960 ± 0.0200 |" in text
  assert "Command: `python -m experiments.block_size_sweep --draws 5`" in text


def test_train_summary_reads_a_finished_run(tmp_path):
  lines = [{"step": 5, "loss": 3.0, "step_time_s": 0.2}, {"step": 10, "loss": 2.5,
                                                          "step_time_s": 0.4}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  out = sweep.train_summary(str(tmp_path))
  assert out["train_loss"] == 2.5 and abs(out["seconds"] - 3.0) < 1e-12
