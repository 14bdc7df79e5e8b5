"""Reward-model benchmarks graded pointwise: the builders on fixtures in each benchmark's
published format, the accuracy rules against hand-computed values, and one runlocal run that
trains the demo judge on the 0-4 scale (warm-up, REAL) and evaluates every benchmark."""
import json
import os

import numpy as np
import pytest

import real_jax
from real_jax import evaluate, preference
from real_jax import main as main_lib
from real_jax.data import load_split
from real_jax.train import config_lib, data_utils
from run_helpers import ROOT

pytestmark = pytest.mark.usefixtures("fast_compiles_module")

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "reward_benchmarks")
CONFIG = os.path.join(ROOT, "configs", "reward_benchmarks.py")


def test_tie_rule():
  assert preference.top_credit([3.0], [2.0]) == (1.0, False)
  assert preference.top_credit([2.0], [3.0]) == (0.0, False)
  assert preference.top_credit([3.0], [3.0]) == (0.5, True)  # a pairwise tie counts half
  assert preference.top_credit([4.0], [4.0, 4.0, 1.0]) == (pytest.approx(1 / 3), True)
  assert preference.top_credit([5.0, 4.0], [3.0, 1.0]) == (1.0, False)  # every correct above
  assert preference.top_credit([5.0, 3.0], [3.0, 1.0]) == (0.5, True)


def _recs(items):
  """Records of `preference.group_responses` from (group, subset, [(score, preferred, style)])."""
  recs, scores = [], []
  for g, sub, resp in items:
    for pos, (s, p, st) in enumerate(resp):
      recs.append({"group": g, "subset": sub, "preferred": p, "style": st, "position": pos})
      scores.append(s)
  return recs, scores


def test_rewardbench_sections_weight_math_as_all_code():
  items = [("a", "alpacaeval-easy", [(5, 1, -1), (1, 0, -1)]),   # right
           ("b", "mt-bench-hard", [(2, 1, -1), (2, 0, -1)]),     # tie: 1/2
           ("c", "math-prm", [(1, 1, -1), (5, 0, -1)]),          # wrong
           ("d", "hep-go", [(4, 1, -1), (3, 0, -1)]),            # right
           ("e", "hep-cpp", [(4, 1, -1), (3, 0, -1)]),           # right
           ("f", "hep-cpp", [(1, 1, -1), (3, 0, -1)])]           # wrong
  m = preference.benchmark_metrics("rewardbench", *_recs(items))
  assert m["sections"] == {"Chat": 1.0, "Chat Hard": 0.5,
                           "Reasoning": pytest.approx((0.0 + 2 / 3) / 2)}
  assert m["headline"] == pytest.approx((1.0 + 0.5 + 1 / 3) / 3)
  assert m["tie_rate"] == pytest.approx(1 / 6) and m["items"] == 6


def test_best_of_4_and_rm_bench_matrix():
  items = [("x", "Math", [(3, 1, -1), (3, 0, -1), (2, 0, -1), (1, 0, -1)]),  # top tie of 2
           ("y", "Math", [(4, 1, -1), (3, 0, -1), (2, 0, -1), (1, 0, -1)]),
           ("z", "Focus", [(1, 1, -1), (3, 0, -1), (2, 0, -1), (1, 0, -1)])]
  m = preference.benchmark_metrics("rewardbench2", *_recs(items))
  assert m["subsets"]["Math"]["accuracy"] == pytest.approx(0.75) and m["incomplete"] == 0
  recs, scores = _recs(items + [("w", "Math", [(2, 1, -1), (1, 0, -1)]),  # 2 of its 4 graded
                                ("v", "Math", [(2, 1, -1)])])             # no rejected graded
  recs[-3]["group_size"] = recs[-2]["group_size"] = 4
  m2 = preference.benchmark_metrics("rewardbench2", recs, scores)
  assert m2["incomplete"] == 2 and m2["subsets"] == m["subsets"]  # not scored as smaller items
  assert m["headline"] == pytest.approx((0.75 + 0.0) / 2)
  # RM-Bench: chosen styles score 1, 3, 5 and rejected 2, 2, 2.
  resp = [(1, 1, 0), (3, 1, 1), (5, 1, 2), (2, 0, 0), (2, 0, 1), (2, 0, 2)]
  m = preference.benchmark_metrics("rm_bench", *_recs([("q", "chat", resp)]))
  d = m["domains"]["chat"]
  assert np.allclose(d["matrix"], [[0, 0, 0], [1, 1, 1], [1, 1, 1]])
  # hard: chosen less styled than rejected (upper triangle), easy: the lower triangle
  assert (d["hard"], d["normal"], d["easy"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0)
  assert m["headline"] == pytest.approx(d["avg"]) == pytest.approx(6 / 9)


@pytest.mark.parametrize("name,n_records,n_groups", [
    ("rewardbench", 12, 6), ("rewardbench2", 16, 4), ("rm_bench", 18, 3), ("judgebench", 6, 3),
    ("ppe", 4, 2)])
def test_builders_read_the_published_fields(tmp_path, name, n_records, n_groups):
  src = load_split(name, data_dir=str(tmp_path), manual_dir=FIXTURES, scores="0-4")
  recs = [src[i] for i in range(len(src))]
  assert len(recs) == n_records and len({r["group"] for r in recs}) == n_groups
  assert {r["target"] for r in recs} == {0.0, 4.0}  # preferred -> the top score, else bottom
  assert all((r["target"] == 4.0) == (r["preferred"] == 1) for r in recs)
  assert all("Score 0:" in r["prompt"] and r["response"] in r["prompt"] for r in recs)
  if name == "ppe":  # the tie is not scored, and counted
    assert src.validation["skipped"] == {"bad_prompt": 1}
  preferred = {r["response"] for r in recs if r["preferred"] == 1}
  want = {"rewardbench": "4.", "rewardbench2": "Paris.", "rm_bench": "**10**", "judgebench": "42",
          "ppe": "5"}[name]
  assert want in preferred  # the published label picks the response
  if name == "judgebench":
    assert {r["subset"] for r in recs} == {"knowledge", "math", "coding"}
  if name == "rm_bench":
    assert {r["subset"] for r in recs} == {"chat", "math", "safety"}
    assert sorted(r["style"] for r in recs if r["group"] == "0000000") == [0, 0, 1, 1, 2, 2]


def test_biggen_bench_is_pointwise_on_its_rubrics(tmp_path):
  rows = [json.loads(l) for l in open(os.path.join(FIXTURES, "biggen_bench.jsonl"))]
  for scores, shift in (("1-5", 0), ("0-4", -1)):
    src = load_split("biggen_bench", data_dir=str(tmp_path / scores), manual_dir=FIXTURES,
                     scores=scores)
    got = sorted((src[i]["id"], src[i]["target"]) for i in range(len(src)))
    assert [t for _, t in got] == [r["human_score"] + shift for r in rows]
    assert "Score 5: Right." in src[0]["prompt"] if shift == 0 else "Score 4: Right." in src[0][
        "prompt"]
  with pytest.raises(ValueError, match="5-level"):
    load_split("biggen_bench", data_dir=str(tmp_path / "x"), manual_dir=FIXTURES, scores="1-10")


def test_runlocal_judge_on_every_benchmark(tmp_path):
  """The runlocal config: warm-up and REAL on the 0-4 synthetic task, evaluation of the final
  judge with 4 CoTs per item on its test split and every benchmark's fixtures."""
  c = config_lib.load_config(CONFIG + ":runlocal,scores=0-4,method=real")
  c.unlock()
  c.eval.num_cots = 4
  c.eval.after_warmup = False  # one evaluation (the final judge's) keeps the test short
  c.log.tensorboard = False
  c.lock()
  wd = str(tmp_path / "rb")
  main_lib.run(c, wd)
  with open(os.path.join(wd, "results.json")) as f:
    rows = json.load(f)["rows"]
  assert len(rows) == 1  # REAL after its warm-up
  for r in rows:
    assert r["info"]["num_cots"] == 4
    splits = r["summary"]["splits"]
    assert set(splits) == {"test", "rewardbench", "rewardbench2", "rm_bench", "judgebench",
                           "ppe", "biggen_bench"}
    for b in ("rewardbench", "rewardbench2", "rm_bench", "judgebench", "ppe"):
      p = splits[b]["preference"]
      assert 0.0 <= p["rail"]["headline"] <= 1.0 and 0.0 <= p["standard"]["headline"] <= 1.0
  with open(os.path.join(wd, "results.md")) as f:
    md = f.read()
  assert "## Reward benchmarks" in md and "4 sampled CoTs per item" in md
  table = md.split("## Reward benchmarks")[1].split("\n\n")[2]
  cells = evaluate.check_markdown_table(table)
  assert [row[1] for row in cells[1:]] == ["rewardbench", "rewardbench2", "rm_bench",
                                           "judgebench", "ppe"]
  # The 0-4 scale everywhere: training labels, the prompts, the readouts, the judge.
  train, evals, _ = data_utils.load_sources(c, wd, train=True, evaluation=True)
  assert {train[i]["target_int"] for i in range(len(train))} == {0, 1, 2, 3, 4}
  assert 0 in {train[i]["feedback_score"] for i in range(len(train))}
  assert all("an integer between 0 and 4" in evals[s][0]["prompt"] for s in evals)
  tags = [f[:-len("_predictions.jsonl")] for f in os.listdir(os.path.join(wd, "eval"))
          if f.endswith("_predictions.jsonl")]
  for tag in tags:
    for split, p in evaluate.read_predictions(wd, tag).items():
      assert (p["rail"] >= 0).all() and (p["rail"] <= 4).all(), (tag, split)
      assert set(np.unique(p["standard"])) <= {0., 1., 2., 3., 4.}, (tag, split)
  judge = real_jax.Judge.from_workdir(wd)
  assert judge.scale.spec == "0-4" and judge.score_tokens.values == (0., 1., 2., 3., 4.)
  g = judge.grade([{"prompt": evals["test"][0]["prompt"]}], max_new_tokens=8)[0]
  assert set(g.score_probs) == {0., 1., 2., 3., 4.}
