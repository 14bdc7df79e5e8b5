"""Evaluation metrics equal hand-computed values and independent formulas; both readouts follow
one rule for invalid CoTs; result tables are well-formed markdown."""

import json
import math

import numpy as np
import pytest

from real_jax import evaluate as ev
from real_jax import readout
from real_jax.train import metrics


def _split(rng, n=50, noise=0.7):
  target = rng.integers(1, 6, size=n).astype(np.float64) + rng.normal(0, 0.3, n)
  rail = target + rng.normal(0, noise, n)
  std = np.clip(np.round(target + rng.normal(0, 1.0, n)), 1, 5)
  valid = rng.random(n) > 0.1
  return {"target": target, "rail": rail, "standard": std, "valid": valid,
          "standard_valid": valid & (rng.random(n) > 0.1)}


def _pearson(x, y):
  x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
  return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def _average_ranks(x):
  """1-based ranks, ties sharing the mean of their positions (written out, no scipy)."""
  x = list(x)
  return [sum(1 for v in x if v < xi) + (sum(1 for v in x if v == xi) + 1) / 2 for xi in x]


def _kendall_tau_b(x, y):
  """tau-b by enumerating every pair: (C - D) / sqrt((n0 - n1)(n0 - n2))."""
  n = len(x)
  c = d = tx = ty = 0
  for i in range(n):
    for j in range(i + 1, n):
      sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
      tx += sx == 0
      ty += sy == 0
      c += sx * sy > 0
      d += sx * sy < 0
  n0 = n * (n - 1) / 2
  return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_correlations_on_hand_computed_values():
  # No ties: Pearson = Spearman = 0.8 (ranks are the values), Kendall (8 - 2) / 10 = 0.6.
  got = ev.correlations([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
  assert (got["pearson"], got["spearman"], got["kendall"]) == pytest.approx((0.8, 0.8, 0.6))
  assert got["mse"] == pytest.approx(4 / 5) and got["l1"] == pytest.approx(4 / 5)
  # Ties on both sides: C = 4, D = 0, one tied pair each side -> tau-b = 4 / sqrt(5 * 5) = 0.8;
  # Spearman is Pearson of the average ranks (1.5, 1.5, 3, 4) and (1, 2.5, 2.5, 4).
  got = ev.correlations([1, 1, 2, 3], [1, 2, 2, 3])
  assert got["kendall"] == pytest.approx(0.8)
  assert got["spearman"] == pytest.approx(_pearson([1.5, 1.5, 3, 4], [1, 2.5, 2.5, 4]))


def test_correlations_equal_independent_formulas():
  """Against formulas written out here (not scipy, which `correlations` calls): Pearson by
  definition, Spearman as Pearson of average ranks, Kendall tau-b by pair enumeration, on data
  with many ties (integer targets, rounded predictions) as the standard readout has."""
  rng = np.random.default_rng(0)
  d = _split(rng)
  for pred, target in ((d["rail"], d["target"]), (d["standard"], np.round(d["target"]))):
    got = ev.correlations(pred, target)
    assert got["pearson"] == pytest.approx(_pearson(pred, target), abs=1e-12)
    assert got["spearman"] == pytest.approx(
        _pearson(_average_ranks(pred), _average_ranks(target)), abs=1e-12)
    assert got["kendall"] == pytest.approx(_kendall_tau_b(pred, target), abs=1e-12)
    assert got["mse"] == pytest.approx(np.mean((pred - target) ** 2))
    assert got["n"] == 50


def test_degenerate_inputs_give_nan_not_an_error():
  for pred, target in (([3.0] * 5, [1, 2, 3, 4, 5]), ([1, 2, 3], [4, 4, 4]), ([2.0], [3.0]),
                       ([], [])):
    got = ev.correlations(pred, target)
    assert all(math.isnan(got[m]) for m in ("pearson", "spearman", "kendall")), (pred, got)
    assert got["n"] == len(pred)
  got = ev.correlations([1.0, float("nan"), 3.0, 4.0], [1, 2, 3, 4])  # a NaN prediction
  assert math.isnan(got["pearson"]) and math.isnan(got["mse"])


def test_summarize_per_split_and_average():
  rng = np.random.default_rng(1)
  splits = {"test": _split(rng), "test_ood_hard": _split(rng, 40, 1.5),
            "flask": _split(rng, 30, 0.2)}
  s = ev.summarize(splits)
  for name, d in splits.items():
    for r in ("rail", "standard"):
      assert s["splits"][name][r]["pearson"] == pytest.approx(
          _pearson(d[r], d["target"]), abs=1e-12)
      assert s["splits"][name][r]["kendall"] == pytest.approx(
          _kendall_tau_b(d[r], d["target"]), abs=1e-12)
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


@pytest.mark.parametrize("invalid", ["force", "midpoint"])
def test_both_readouts_follow_one_rule_for_invalid_cots(invalid):
  """Rows: a valid CoT with a score sampled; an invalid CoT (no delimiter) with a score sampled
  at the forced delimiter; an invalid CoT with a non-score token sampled there; a valid CoT with
  a non-score token sampled."""
  found = np.array([True, False, False, True])
  y_hat = np.array([4.2, 2.6, 1.9, 3.3])
  sampled = np.array([4.0, 2.0, 3.0, 3.0])  # values_of(...): the midpoint where not a score
  is_score = np.array([True, True, False, False])
  rail, std, std_valid = readout.apply_invalid_rule(invalid, found, y_hat, sampled, is_score,
                                                    3.0)
  if invalid == "force":  # both read the forced position; the standard midpoint only off-score
    np.testing.assert_allclose(rail, y_hat.astype(np.float32))
    np.testing.assert_array_equal(std, [4.0, 2.0, 3.0, 3.0])
    np.testing.assert_array_equal(std_valid, [True, True, False, False])
  else:  # both give the midpoint where the CoT did not reach the delimiter
    np.testing.assert_allclose(rail, np.float32([4.2, 3.0, 3.0, 3.3]))
    np.testing.assert_array_equal(std, [4.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(std_valid, [True, False, False, False])


def test_results_compare_the_readouts_on_valid_items_only(tmp_path):
  rng = np.random.default_rng(5)
  d = _split(rng, 60)
  s = ev.summarize({"test": d})
  v = d["valid"]
  vo = s["splits"]["test"]["valid_only"]
  assert vo["n"] == int(v.sum()) < 60
  for r in ("rail", "standard"):
    assert vo[r]["pearson"] == pytest.approx(_pearson(d[r][v], d["target"][v]), abs=1e-12)
    assert s["avg"]["valid_only"][r]["pearson"] == vo[r]["pearson"]  # one split
  md = ev.update_results(str(tmp_path), "REAL", s)
  section = md.split("## Pearson r x 100 on the items whose CoT reached the delimiter")[1]
  section = section.split("\n## ")[0]  # up to the next heading
  table = ev.check_markdown_table("\n".join(l for l in section.splitlines() if l.startswith("|")))
  assert table[0][2] == f"Test (ID) (n={int(v.sum())})"
  assert table[1][2] == f"{100 * vo['rail']['pearson']:.1f}"
  assert table[2][2] == f"{100 * vo['standard']['pearson']:.1f}"
