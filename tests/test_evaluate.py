"""Evaluation metrics equal scipy's; result tables are well-formed markdown."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from real_jax import evaluate as ev
from real_jax.train import metrics


def _split(rng, n=50, noise=0.7):
  target = rng.integers(1, 6, size=n).astype(np.float64) + rng.normal(0, 0.3, n)
  rail = target + rng.normal(0, noise, n)
  std = np.clip(np.round(target + rng.normal(0, 1.0, n)), 1, 5)
  valid = rng.random(n) > 0.1
  return {"target": target, "rail": rail, "standard": std, "valid": valid,
          "standard_valid": valid & (rng.random(n) > 0.1)}


def test_correlations_equal_scipy():
  rng = np.random.default_rng(0)
  d = _split(rng)
  got = ev.correlations(d["rail"], d["target"])
  assert got["pearson"] == pytest.approx(stats.pearsonr(d["rail"], d["target"])[0], abs=1e-12)
  assert got["spearman"] == pytest.approx(stats.spearmanr(d["rail"], d["target"])[0], abs=1e-12)
  assert got["kendall"] == pytest.approx(stats.kendalltau(d["rail"], d["target"])[0], abs=1e-12)
  assert got["mse"] == pytest.approx(np.mean((d["rail"] - d["target"]) ** 2))
  assert got["n"] == 50


def test_constant_predictions_give_nan_not_an_error():
  got = ev.correlations([3.0] * 5, [1, 2, 3, 4, 5])
  assert all(math.isnan(got[m]) for m in ("pearson", "spearman", "kendall"))


def test_summarize_per_split_and_average():
  rng = np.random.default_rng(1)
  splits = {"test": _split(rng), "test_ood_hard": _split(rng, 40, 1.5),
            "flask": _split(rng, 30, 0.2)}
  s = ev.summarize(splits)
  for name, d in splits.items():
    for r in ("rail", "standard"):
      assert s["splits"][name][r]["pearson"] == pytest.approx(
          stats.pearsonr(d[r], d["target"])[0], abs=1e-12)
      assert s["splits"][name][r]["kendall"] == pytest.approx(
          stats.kendalltau(d[r], d["target"])[0], abs=1e-12)
    assert s["splits"][name]["invalid_frac"] == pytest.approx(1 - d["valid"].mean())
  for r in ("rail", "standard"):
    for m in ("pearson", "spearman", "kendall"):
      assert s["avg"][r][m] == pytest.approx(np.mean([s["splits"][n][r][m] for n in splits]))
  assert metrics.lookup(s, "avg/rail/pearson") == s["avg"]["rail"]["pearson"]
  with pytest.raises(KeyError, match="avg/rail/pearsn"):
    metrics.lookup(s, "avg/rail/pearsn")


def test_tables_are_well_formed(tmp_path):
  rng = np.random.default_rng(2)
  a = ev.summarize({"test": _split(rng), "test_ood_hard": _split(rng)})
  b = ev.summarize({"test": _split(rng), "test_ood_rubric": _split(rng)})
  rows = [("warm-up (SFT)", a), ("REAL", b)]
  table = ev.results_table(rows)
  cells = ev.check_markdown_table(table)
  assert cells[0] == ["Model", "Readout", "Test (ID) (n=50)", "OOD hard (n=50)",
                      "OOD rubric (n=50)", "Avg"]
  assert len(cells) == 1 + 2 * 2
  assert cells[1][:2] == ["warm-up (SFT)", "RAIL (ŷ)"]
  assert cells[1][-1] == f"{100 * a['avg']['rail']['pearson']:.1f}"
  assert cells[1][4] == "–"  # a split that model was not evaluated on
  summary = ev.check_markdown_table(ev.summary_table(rows))
  assert summary[0][2:5] == ["Pearson", "Spearman", "Kendall"] and len(summary) == 5
  md = ev.update_results(str(tmp_path), "warm-up (SFT)", a)
  md = ev.update_results(str(tmp_path), "REAL", b)
  assert md == (tmp_path / "results.md").read_text()
  for block in md.split("\n\n"):
    if block.startswith("|"):
      ev.check_markdown_table(block)
  assert [r["name"] for r in json.loads((tmp_path / "results.json").read_text())["rows"]] == [
      "warm-up (SFT)", "REAL"]
  with pytest.raises(ValueError, match="cells"):
    ev.check_markdown_table("| a | b |\n|---|---|\n| 1 |")
  assert ev.FEW_ITEMS_NOTE not in md  # every split has 50 items


def test_tables_give_n_per_split_and_flag_small_ones(tmp_path):
  """A correlation on fewer than MIN_ITEMS (30) items is marked, and results.md says why."""
  rng = np.random.default_rng(4)
  big = ev.summarize({"test": _split(rng, 40), "flask": _split(rng, 29)})
  other = ev.summarize({"test": _split(rng, 35), "flask": _split(rng, 29)})
  cells = ev.check_markdown_table(ev.results_table([("A", big), ("B", other)]))
  assert cells[0][2:4] == ["Test (ID) (n=35–40)", "FLASK (n=29)"]
  assert cells[1][2] == f"{100 * big['splits']['test']['rail']['pearson']:.1f}"
  assert cells[1][3] == f"{100 * big['splits']['flask']['rail']['pearson']:.1f} †"
  md = ev.update_results(str(tmp_path), "A", big)
  assert ev.FEW_ITEMS_NOTE in md and "fewer than 30 items" in md
  mse = ev.check_markdown_table(ev.results_table([("A", big)], metric="mse"))
  assert mse[1][3] == f"{big['splits']['flask']['rail']['mse']:.3f}"  # raw, and not flagged


def test_write_eval(tmp_path):
  rng = np.random.default_rng(3)
  d = _split(rng, 5)
  d["cot"] = np.asarray(["x"] * 5, dtype=object)
  s = ev.summarize({"test": d})
  path = ev.write_eval(str(tmp_path), "final", s, {"test": d}, extra={"readout": "cot"})
  data = json.loads(open(path).read())
  assert data["tag"] == "final" and data["readout"] == "cot"
  lines = (tmp_path / "eval" / "final_predictions.jsonl").read_text().splitlines()
  assert len(lines) == 5 and json.loads(lines[0])["split"] == "test"


def test_progress_says_a_long_step_is_still_running(monkeypatch):
  """A loop silent for longer than its heartbeat (a first compile, a large rollout) logs what
  it is doing; a loop that logs often prints no heartbeat; the thread stops with the loop."""
  import threading
  import time

  from real_jax.train import metrics
  lines = []
  monkeypatch.setattr(metrics.logging, "info", lambda fmt, *a: lines.append(fmt % a if a else fmt))
  with metrics.Progress("rl", 3, every=1, unit="update", heartbeat=0.05) as prog:
    prog.phase = "rollout round 1 (at most 2)"
    time.sleep(0.32)
    prog.update(1)
    time.sleep(0.02)
  beats = [l for l in lines if "still running" in l]
  assert 3 <= len(beats) <= 7, lines
  assert beats[0].startswith("[rl] update 1/3 still running after 0:00:00: rollout round 1 "
                             "(at most 2) (the first update after a start includes compilation)")
  assert not any(t.name == "heartbeat:rl" for t in threading.enumerate())
  lines.clear()
  with metrics.Progress("sft", 20, every=1, heartbeat=0.05) as prog:
    for step in range(1, 11):
      time.sleep(0.01)
      prog.update(step)
  assert lines and not any("still running" in l for l in lines)
  p = metrics.Progress("eval", 1, heartbeat=0.05)
  p.update(1)  # the last step stops the heartbeat without a `with`
  p._thread.join(timeout=1)
  assert not p._thread.is_alive()
