"""Judge datasets: TFDS builders on fixture files, validation counts, the synthetic task."""
import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pytest

from real_jax.data import load_split, records, synthetic
from real_jax.data.records import InvalidRowError
from real_jax.judge import prompts, scores

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "judge_data")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _by_id(src):
  return {r["id"]: r for r in src}


# --- real datasets from fixture files ---------------------------------------------------------
# Expected values below are read off the fixture files by hand (see the row comments there).

def test_feedback_collection(data_dir):
  src = load_split("feedback_collection", "train", data_dir=data_dir, manual_dir=FIXTURES)
  recs = _by_id(src)
  assert sorted(recs) == ["feedback_collection-000000", "feedback_collection-000001",
                          "feedback_collection-000006"]
  assert [recs[k]["target"] for k in sorted(recs)] == [4.0, 1.0, 5.0]
  assert [recs[k]["target_int"] for k in sorted(recs)] == [4, 1, 5]
  v = src.validation
  assert (v["rows"], v["kept"]) == (8, 3)
  assert v["skipped"] == {"malformed_row": 1, "missing_score": 1, "unparsable_score": 1,
                          "score_out_of_range": 1, "empty_response": 1}
  with open(os.path.join(FIXTURES, "new_feedback_collection.json")) as f:
    raw = json.load(f)[0]
  r = recs["feedback_collection-000000"]
  assert r["prompt"] == prompts.build_judge_prompt(raw, output_format="score_phrase")
  assert r["response"] == raw["orig_response"] and r["source"] == "feedback_collection"
  # Demonstration CoT without its final score sentence; the score it concluded is kept apart.
  assert r["feedback"] == raw["orig_feedback"].split(" So the overall score is")[0]
  assert r["feedback_score"] == 4
  np.testing.assert_allclose(r["scores"], [4.0])


def test_feedback_collection_result_format_and_stored_report(data_dir):
  src = load_split("feedback_collection", "train", data_dir=data_dir, manual_dir=FIXTURES,
                   output_format="result")
  r = src[0]
  assert "[RESULT] (an integer number between 1 and 5)" in r["prompt"]
  assert "So the overall score is" not in r["prompt"]
  # The validation report is stored with the prepared dataset.
  metas = [os.path.join(d, "metadata.json") for d, _, files in os.walk(data_dir)
           if "metadata.json" in files and "feedback_collection" in d and "result" in d]
  with open(metas[0]) as f:
    stored = json.load(f)
  assert stored["validation"]["train"]["skipped"]["missing_score"] == 1


def test_feedback_bench_jsonl_mixed_layouts(data_dir):
  src = load_split("feedback_bench", "test", data_dir=data_dir, manual_dir=FIXTURES)
  recs = _by_id(src)
  assert sorted(recs) == ["feedback_bench-000000", "feedback_bench-000001", "feedback_bench-000002"]
  assert recs["feedback_bench-000000"]["target"] == 3.0
  tract = recs["feedback_bench-000002"]  # TRACT-style row: prebuilt prompt, gpt4_score list
  assert tract["target"] == pytest.approx(14 / 3) and tract["target_int"] == -1
  assert tract["instruction"] == "Name a prime number larger than 10." and tract["response"] == "11"
  assert "[RESULT]" not in tract["prompt"]
  assert (tract["feedback"], tract["feedback_score"]) == ("11 is prime and larger than 10.", 5)
  assert src.validation["skipped"] == {"malformed_row": 1, "score_out_of_range": 1}


def test_flask_gpt4_and_human_ground_truth(data_dir):
  src = load_split("flask", "test", data_dir=data_dir, manual_dir=FIXTURES)
  recs = _by_id(src)
  assert {k: round(r["target"], 4) for k, r in recs.items()} == {
      "flask-000000": round(14 / 3, 4), "flask-000001": round(7 / 3, 4), "flask-000004": 5.0}
  assert src.validation["skipped"] == {"bad_prompt": 1, "score_out_of_range": 1}
  r0 = recs["flask-000000"]  # its prompt had a stray quote and comma around it
  assert r0["instruction"] == "What is 12 times 12?" and r0["prompt"].endswith("###Feedback:")
  assert json.loads(r0["extra"])["criteria"] == "correctness"

  human = load_split("flask", "test", data_dir=data_dir, manual_dir=FIXTURES, ground_truth="human")
  recs = _by_id(human)
  assert {k: round(r["target"], 4) for k, r in recs.items()} == {
      "flask-000000": round(14 / 3, 4), "flask-000001": round(5 / 3, 4), "flask-000002": 5.0}
  assert human.validation["skipped"] == {"bad_prompt": 1, "missing_score": 1}


def test_vicuna_and_mt_bench(data_dir):
  vic = _by_id(load_split("vicuna_bench", "test", data_dir=data_dir, manual_dir=FIXTURES))
  assert {k: r["target"] for k, r in vic.items()} == {"vicuna_bench-000000": 4.0,
                                                        "vicuna_bench-000001": 4.5}
  mt_src = load_split("mt_bench", "test", data_dir=data_dir, manual_dir=FIXTURES)
  mt = _by_id(mt_src)
  assert {k: round(r["target"], 4) for k, r in mt.items()} == {
      "mt_bench-000000": round(11 / 3, 4), "mt_bench-000001": round(4 / 3, 4)}
  assert mt_src.validation["skipped"] == {"unparsable_score": 1}


def test_raise_on_invalid_names_file_and_row(data_dir):
  with pytest.raises(InvalidRowError, match=r"vicuna_eval\.json row 2: empty_response"):
    load_split("vicuna_bench", "test", data_dir=data_dir, manual_dir=FIXTURES, on_invalid="raise")


def test_prompt_too_long_is_counted(data_dir):
  with open(os.path.join(FIXTURES, "mt_bench_eval.json")) as f:
    rows = json.load(f)
  lengths = [len(prompts.build_judge_prompt({"instruction": r["instruction"]})) for r in rows[:2]]
  assert lengths[0] != lengths[1]
  limit = sum(lengths) // 2  # between the two valid rows: exactly one is too long
  src = load_split("mt_bench", "test", data_dir=data_dir, manual_dir=FIXTURES, max_prompt_chars=limit)
  assert src.validation["skipped"] == {"prompt_too_long": 1, "unparsable_score": 1}
  assert [len(r["prompt"]) for r in src] == [min(lengths)]


def test_missing_manual_file_error(tmp_path):
  empty = tmp_path / "manual"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"flask_eval\.json.*" + re.escape(str(empty))):
    load_split("flask", "test", data_dir=str(tmp_path / "d"), manual_dir=str(empty))
  with pytest.raises(FileNotFoundError, match="new_feedback_collection.json"):
    load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=None)


def test_parquet_and_subfolder(tmp_path, data_dir):
  import pyarrow as pa
  import pyarrow.parquet as pq
  with open(os.path.join(FIXTURES, "mt_bench_eval.json")) as f:
    rows = json.load(f)
  rows[2]["gpt4_score"] = [5, 5, 2]  # make every row valid; parquet needs one type per column
  sub = tmp_path / "manual" / "mt_bench"
  sub.mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(rows), str(sub / "mt_bench_eval.parquet"))
  src = load_split("mt_bench", "test", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "manual"))
  assert {r["id"]: round(r["target"], 4) for r in src} == {
      "mt_bench-000000": round(11 / 3, 4), "mt_bench-000001": round(4 / 3, 4), "mt_bench-000002": 4.0}


def test_read_rows_json_array_and_parse_scores():
  assert records.parse_scores("3", "s") == [3.0]
  assert records.parse_scores([4, "5", 4.5], "s") == [4.0, 5.0, 4.5]
  for value, reason in ((None, "missing_score"), ([], "missing_score"), ("x", "unparsable_score"),
                        (True, "unparsable_score"), (float("nan"), "unparsable_score"),
                        (0, "score_out_of_range"), ([3, 6], "score_out_of_range")):
    with pytest.raises(InvalidRowError) as e:
      records.parse_scores(value, "s")
    assert e.value.reason == reason
  assert records.target_int(4.0) == 4 and records.target_int(3.5) == -1


# --- synthetic task ---------------------------------------------------------------------------

def independent_score(instruction: str, response: str) -> int:
  """Checks the items by parsing the text and adding, independently of the generator."""
  items = dict(re.findall(r"\b([a-d])\) (\d+(?:\+\d+)+)", instruction))
  answers = dict(re.findall(r"\b([a-d])\) (\d+)", response))
  assert sorted(items) == sorted(answers) == ["a", "b", "c", "d"]
  right = sum(sum(int(x) for x in items[k].split("+")) == int(answers[k]) for k in items)
  return 1 + right


def check_cot(row) -> tuple[bool, int]:
  """(every step of the demonstration is right, the score the demonstration concludes)."""
  items = dict(re.findall(r"\b([a-d])\) (\d+(?:\+\d+)+)", row["orig_instruction"]))
  answers = dict(re.findall(r"\b([a-d])\) (\d+)", row["orig_response"]))
  steps = re.findall(r"(\d+(?:\+\d+)+)=(\d+) vs (\d+) (right|wrong)\.", row["orig_feedback"])
  assert re.findall(r"\b([a-d])\) \d+\+", row["orig_feedback"]) == list("abcd")  # by label
  assert [s[0] for s in steps] == [items[k] for k in "abcd"]
  assert [s[2] for s in steps] == [answers[k] for k in "abcd"]
  all_right = all(sum(map(int, e.split("+"))) == int(s) for e, s, _, _ in steps)
  for e, s, a, v in steps:  # verdicts follow the shown sums, even wrong ones
    assert (v == "right") == (int(s) == int(a))
  m = re.search(r"So the overall score is (\d)$", row["orig_feedback"])
  assert int(m.group(1)) == 1 + sum(v == "right" for *_, v in steps)
  return all_right, int(m.group(1))


def test_synthetic_shuffled_items_are_found_by_label():
  """shuffle_items lists the items in random label orders (the answers stay a-d); the
  demonstration still walks a-d, each step the item and the answer with that label."""
  cfg = synthetic.SyntheticConfig(seed=1, shuffle_items=True, label_noise=0.0, cot_error_rate=0.0,
                                  train_size=300, test_size=50, ood_size=50)
  rows = synthetic.generate_all(cfg)
  orders = set()
  for split, rs in rows.items():
    for r in rs:
      orders.add(tuple(re.findall(r"\b([a-d])\) \d+\+", r["orig_instruction"])))
      assert re.findall(r"\b([a-d])\) \d+", r["orig_response"]) == list("abcd")
      all_right, score = check_cot(r)
      assert all_right and score == r["true_score"] == independent_score(r["orig_instruction"],
                                                                        r["orig_response"])
  assert len(orders) > 12 and tuple("abcd") in orders
  plain = synthetic.generate_all(dataclasses.replace(cfg, shuffle_items=False))
  assert {tuple(re.findall(r"\b([a-d])\) \d+\+", r["orig_instruction"]))
          for r in plain["train"]} == {tuple("abcd")}


def test_synthetic_ood_rubric_shuffled_responses_change_only_their_order():
  """ood_rubric_shuffle_response lists the OOD-rubric responses' answers in random label orders
  and changes nothing else: every other field of that split and every other split are those of
  the default, and each label keeps its answer (the score and the demonstration still hold)."""
  cfg = synthetic.SyntheticConfig(seed=2, shuffle_items=True, label_noise=0.0, cot_error_rate=0.0,
                                  train_size=200, test_size=40, ood_size=120)
  plain = synthetic.generate_all(cfg)
  shuffled = synthetic.generate_all(dataclasses.replace(cfg, ood_rubric_shuffle_response=True))
  orders = []
  for split in plain:
    for a, b in zip(plain[split], shuffled[split], strict=True):
      if split != "test_ood_rubric":
        assert a == b
        continue
      assert {k: v for k, v in a.items() if k != "orig_response"} == {
          k: v for k, v in b.items() if k != "orig_response"}
      by_label = lambda r: dict(re.findall(r"\b([a-d])\) (\d+)", r["orig_response"]))
      assert by_label(a) == by_label(b)
      orders.append(tuple(re.findall(r"\b([a-d])\) \d+", b["orig_response"])))
      all_right, score = check_cot(b)
      assert all_right and score == b["true_score"] == independent_score(b["orig_instruction"],
                                                                        b["orig_response"])
      assert sorted(orders[-1]) == list("abcd")
  assert len(set(orders)) > 12
  assert synthetic.generate_all(dataclasses.replace(cfg, ood_rubric_shuffle_response=True)) == (
      shuffled)  # deterministic


def test_synthetic_default_data_unchanged():
  """The generator's default path keeps producing the data it produced before the OOD-rubric
  response knob existed (sha1 of the JSON of every split, computed with that version)."""
  cases = [(dict(seed=2, shuffle_items=True, train_size=200, test_size=40, ood_size=120),
            "04195d4c2de44423d2ada5ce6eaa5249e5936590"),
           (dict(seed=5, difficulty=1, ood_hard="carry", near_miss_credit=0.5, cot_error_rate=0.3,
                 train_size=100, test_size=30, ood_size=60),
            "127f8fb62731acd9f270188a9f63b07a978b607c")]
  for kw, want in cases:
    data = synthetic.generate_all(synthetic.SyntheticConfig(**kw))
    assert hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest() == want, kw


def test_synthetic_ground_truth_matches_independent_checker():
  cfg = synthetic.SyntheticConfig(seed=3, label_noise=0.0, cot_error_rate=0.0, train_size=400,
                                  test_size=100, ood_size=100)
  data = synthetic.generate_all(cfg)
  for split, rows in data.items():
    for row in rows:
      score = independent_score(row["orig_instruction"], row["orig_response"])
      assert score == row["true_score"] == int(row["orig_score"])
      all_right, demo = check_cot(row)
      assert all_right and demo == score
      if split != "train":
        assert row["gpt4_score"] == [score] * cfg.n_eval_graders
  # Scores are spread over 1..5 and the OOD splits are what they claim to be.
  assert set(r["true_score"] for r in data["train"]) == {1, 2, 3, 4, 5}
  assert all(r["orig_instruction"].count("+") == 4 * 2 for r in data["test_ood_hard"])  # 3 operands
  assert all(r["orig_instruction"].count("+") == 4 * 1 for r in data["test"])
  in_domain = {w.criteria for w in synthetic.IN_DOMAIN_WORDINGS}
  assert all(r["orig_criteria"] not in in_domain for r in data["test_ood_rubric"])
  assert all(r["orig_criteria"] in in_domain for r in data["train"])


def _exact_expected_label(n_right: int, n_close: int, q: float, p: float) -> float:
  """E[one grader's label] by enumerating every credit pattern and noise outcome (independent of
  the generator's closed form)."""
  import itertools
  total = 0.0
  for credits in itertools.product((0, 1), repeat=n_close):
    w = np.prod([q if c else 1 - q for c in credits])
    s = 1 + n_right + sum(credits)
    outcomes = [(s, 1 - p)]
    for step in (1, -1):
      t = s + step if 1 <= s + step <= 5 else s - step  # inward at the ends
      outcomes.append((t, p / 2))
    total += w * sum(v * pv for v, pv in outcomes)
  return total


@pytest.mark.parametrize("q,p", [(0.5, 0.2), (0.3, 0.0), (0.0, 0.2)])
def test_synthetic_expected_score_is_exact(q, p):
  cfg = synthetic.SyntheticConfig(near_miss_credit=q, label_noise=p)
  for n_right in range(5):
    for n_close in range(5 - n_right):
      assert synthetic.expected_score(n_right, n_close, cfg) == pytest.approx(
          _exact_expected_label(n_right, n_close, q, p), abs=1e-12)


def test_synthetic_graded_near_misses():
  """Graders credit an off-by-one answer with probability near_miss_credit: the demonstrations
  call it "close", labels follow the credit, and expected_score is E[y*|x] (checked against the
  labels' empirical means, and as the Bayes predictor of the test targets)."""
  q = 0.5
  cfg = synthetic.SyntheticConfig(seed=4, difficulty=0, near_miss_credit=q, label_noise=0.2,
                                  cot_error_rate=0.0, train_size=6000, test_size=400,
                                  ood_size=60)
  data = synthetic.generate_all(cfg)
  by_cell: dict = {}
  for r in data["train"]:
    items = dict(re.findall(r"\b([a-d])\) (\d+(?:\+\d+)+)", r["orig_instruction"]))
    answers = dict(re.findall(r"\b([a-d])\) (\d+)", r["orig_response"]))
    diffs = [abs(sum(map(int, items[k].split("+"))) - int(answers[k])) for k in "abcd"]
    assert r["n_close"] == diffs.count(1) and r["true_score"] == 1 + diffs.count(0)
    verdicts = re.findall(r" vs \d+ (right|close|wrong)\.", r["orig_feedback"])
    assert verdicts == [("right", "close")[d] if d < 2 else "wrong" for d in diffs]
    demo = int(re.search(r"score is (\d)$", r["orig_feedback"]).group(1))
    assert r["true_score"] <= demo <= r["true_score"] + r["n_close"]
    by_cell.setdefault((r["true_score"], r["n_close"]), []).append(int(r["orig_score"]))
  assert sum(r["n_close"] > 0 for r in data["train"]) > 0.4 * len(data["train"])
  for (t, c), labels in by_cell.items():
    if len(labels) < 100:
      continue
    want = synthetic.expected_score(t - 1, c, cfg)
    se = np.std(labels) / np.sqrt(len(labels)) + 1e-9
    assert abs(np.mean(labels) - want) < 4.5 * se, ((t, c), np.mean(labels), want)
  # The Bayes predictor beats the clean score and the mode as a predictor of the test targets.
  test = data["test"]
  target = np.array([np.mean(r["gpt4_score"]) for r in test])
  bayes = np.array([r["expected_score"] for r in test])
  clean = np.array([r["true_score"] for r in test], float)
  assert np.mean((bayes - target) ** 2) < np.mean((clean - target) ** 2)
  assert np.corrcoef(bayes, target)[0, 1] > np.corrcoef(clean, target)[0, 1]
  # Without credit no answer is graded as close.
  plain = synthetic.generate_all(dataclasses.replace(cfg, near_miss_credit=0.0, train_size=300))
  assert all("close" not in r["orig_feedback"] and r["n_close"] == 0 for r in plain["train"])


def test_synthetic_splits_disjoint_and_seeded():
  cfg = synthetic.SyntheticConfig(seed=1, difficulty=0, train_size=1500, test_size=300, ood_size=300)
  data = synthetic.generate_all(cfg)
  keys = {}
  for split, rows in data.items():
    k = [(re.sub(r"^[^)]*?(?=a\))", "", r["orig_instruction"]), r["orig_response"]) for r in rows]
    assert len(set(k)) == len(k), split
    keys[split] = set(k)
  for a in keys:
    for b in keys:
      if a < b:
        assert not keys[a] & keys[b], (a, b)
  assert synthetic.generate_all(cfg) == data
  other = synthetic.generate_all(synthetic.SyntheticConfig(seed=2, difficulty=0, train_size=1500,
                                                           test_size=300, ood_size=300))
  assert other["train"][:20] != data["train"][:20]


def test_synthetic_dedup_in_a_small_item_space(monkeypatch):
  # One operand in 0..1: few distinct examples exist, so plain sampling would repeat them.
  monkeypatch.setitem(synthetic.LEVELS, 0, (1, 1))
  cfg = synthetic.SyntheticConfig(seed=0, difficulty=0, train_size=120, test_size=40, ood_size=40)
  data = synthetic.generate_all(cfg)
  seen = set()
  for split in ("train", "test", "test_ood_rubric"):
    keys = [(re.sub(r"^[^)]*?(?=a\))", "", r["orig_instruction"]), r["orig_response"]) for r in data[split]]
    assert len(set(keys)) == len(keys) and not seen & set(keys)
    seen |= set(keys)
  with pytest.raises(ValueError, match="cannot draw"):
    synthetic.generate_all(dataclasses.replace(cfg, train_size=1000))


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_synthetic_label_noise_rate(p):
  cfg = synthetic.SyntheticConfig(seed=5, label_noise=p, n_eval_graders=4, train_size=3000,
                                  test_size=250, ood_size=50)
  data = synthetic.generate_all(cfg)
  changed = [int(r["orig_score"]) != r["true_score"] for r in data["train"]]
  steps = [abs(int(r["orig_score"]) - r["true_score"]) for r in data["train"]]
  graders = [g != r["true_score"] for r in data["test"] for g in r["gpt4_score"]]
  assert max(steps) <= 1 and all(1 <= int(r["orig_score"]) <= 5 for r in data["train"])
  for flips in (changed, graders):
    n = len(flips)
    bound = 4.5 * np.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(np.mean(flips) - p) <= bound, (np.mean(flips), p, bound)
  # Test targets are the graders' mean.
  r = data["test"][0]
  assert len(r["gpt4_score"]) == 4


def test_synthetic_cot_error_rate():
  rate = 0.25
  cfg = synthetic.SyntheticConfig(seed=9, cot_error_rate=rate, label_noise=0.0, train_size=3000,
                                  test_size=50, ood_size=50)
  rows = synthetic.generate_all(cfg)["train"]
  wrong = [not check_cot(r)[0] for r in rows]
  assert wrong == [r["demo_has_error"] for r in rows]
  assert abs(np.mean(wrong) - rate) <= 4.5 * np.sqrt(rate * (1 - rate) / len(rows))


@pytest.fixture(scope="module")
def syn_tok(tmp_path_factory):
  path = synthetic.build_synthetic_tokenizer(tmp_path_factory.mktemp("syntok"))
  return prompts.load_tokenizer(path)


def test_synthetic_builder_and_token_budget(data_dir, syn_tok):
  sizes = dict(train_size=96, test_size=24, ood_size=24)
  st = scores.resolve_score_tokens(syn_tok)
  assert len(syn_tok) <= 512
  assert [syn_tok.decode([t]) for t in st.token_ids] == list("12345")
  for split in synthetic.SPLITS:
    src = load_split("synthetic", split, data_dir=data_dir, **sizes)
    assert len(src) == sizes["train_size" if split == "train" else
                             "test_size" if split == "test" else "ood_size"]
    assert src.validation["kept"] == len(src) and not src.validation["skipped"]
    for r in src:
      assert r["target"] == pytest.approx(np.mean(r["scores"]))
      if split == "train":
        assert r["target"] == int(json.loads(r["extra"])["orig_score"])
      ids = prompts.render_chat(syn_tok, r["prompt"])
      assert syn_tok.unk_token_id not in ids
      target = prompts.build_target_ids(syn_tok, r["feedback"], r["feedback_score"], score_tokens=st)
      assert syn_tok.unk_token_id not in target
      parsed = scores.parse_generation(target, st)
      assert (parsed.status, parsed.score) == ("ok", r["feedback_score"])
      assert r["prompt"] == prompts.build_judge_prompt(r)  # built from the Prometheus fields


# The documented token budget (real_jax/data/synthetic.py's docstring, docs/data.md): the chat-rendered
# prompt has at most 110 tokens at levels 0-1, 118 at 2-3, 126 at 4, +4 with
# reference_has_answers; a demonstration (CoT + delimiter + score + EOS) is 51 / 59 / 67 tokens.
PROMPT_BUDGET = {0: 110, 1: 110, 2: 118, 3: 118, 4: 126}
DEMO_TOKENS = {0: 51, 1: 51, 2: 59, 3: 59, 4: 67}


@pytest.mark.parametrize("difficulty", [0, 2])
@pytest.mark.parametrize("answers", [False, True])
def test_synthetic_token_budget_is_the_documented_one(syn_tok, difficulty, answers):
  """Difficulty 0 covers levels 0-1 (test_ood_hard is one level up), 2 covers 2-3; every prompt
  is within its level's budget and the longest reaches it (the bound is tight), every
  demonstration has exactly its level's length."""
  st = scores.resolve_score_tokens(syn_tok)
  cfg = synthetic.SyntheticConfig(difficulty=difficulty, reference_has_answers=answers,
                                  train_size=300, test_size=150, ood_size=150)
  opts = records.RecordOptions()
  longest = {}
  for split, rows in synthetic.generate_all(cfg).items():
    level = difficulty + (split == "test_ood_hard")
    for row in rows:
      r = records.make_record(row, source="synthetic", row_id=row["id"], options=opts)
      n = len(prompts.render_chat(syn_tok, r["prompt"]))
      assert n <= PROMPT_BUDGET[level] + 4 * answers, (split, n)
      longest[level] = max(longest.get(level, 0), n)
      demo = prompts.build_target_ids(syn_tok, r["feedback"], r["feedback_score"],
                                      score_tokens=st)
      assert len(demo) == DEMO_TOKENS[level], (split, len(demo))
  assert longest == {lv: PROMPT_BUDGET[lv] + 4 * answers for lv in (difficulty, difficulty + 1)}


def test_synthetic_builder_options_get_own_config(data_dir):
  a = load_split("synthetic", "test", data_dir=data_dir, train_size=16, test_size=8, ood_size=8, seed=1)
  b = load_split("synthetic", "test", data_dir=data_dir, train_size=16, test_size=8, ood_size=8, seed=2)
  assert [r["instruction"] for r in a] != [r["instruction"] for r in b]
  with pytest.raises(TypeError, match="unknown option"):
    load_split("synthetic", "test", data_dir=data_dir, sead=1)


# --- bad data files: one clear error naming the file, or skipped and counted -------------------

def _fc_rows():
  with open(os.path.join(FIXTURES, "new_feedback_collection.json")) as f:
    rows = json.load(f)
  return [rows[0], rows[1], rows[6]]  # the three valid rows (scores 4, 1, 5)


def _write(folder, name, content: bytes | str):
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return str(path)


def test_a_json_file_that_does_not_parse_names_the_file_and_position(tmp_path):
  """Before: re-read as JSONL ("read 18 rows, skipped 18") and then a TFDS AssertionError."""
  text = json.dumps(_fc_rows(), indent=1)
  path = _write(tmp_path / "m", "new_feedback_collection.json", text[:-40])  # cut short
  with pytest.raises(ValueError, match=re.escape(path) + r": not valid JSON: .* at line \d+ "
                                       r"column \d+ \(char \d+\)"):
    load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))


def test_a_split_with_no_usable_row_names_the_file_and_reasons(tmp_path):
  """Before: TFDS's "Failed to finalize writing of split ...: No examples were yielded"."""
  rows = [{k: v for k, v in r.items() if k != "orig_score"} for r in _fc_rows()]
  path = _write(tmp_path / "m", "new_feedback_collection.json", json.dumps(rows))
  with pytest.raises(records.NoUsableRowsError,
                     match=rf"feedback_collection/train: none of the 3 rows of {re.escape(path)} "
                           r"is usable \(missing_score 3\); first: .*row 0: missing_score: "
                           r"neither orig_score"):
    load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  _write(tmp_path / "e", "new_feedback_collection.json", "[]")
  with pytest.raises(records.NoUsableRowsError, match=r"none of the 0 rows .*\(no rows\)"):
    load_split("feedback_collection", data_dir=str(tmp_path / "d2"), manual_dir=str(tmp_path / "e"))


def test_non_utf8_bytes_are_counted_in_jsonl_and_named_in_json(tmp_path):
  """Before: a bare UnicodeDecodeError without a file name, even with on_invalid=skip."""
  lines = [json.dumps(r).encode("utf-8") for r in _fc_rows()]
  lines[1] = lines[1].replace(b"Feedback", b"Feedb\xffack", 1)
  m = tmp_path / "m"
  _write(m, "new_feedback_collection.jsonl", b"\n".join(lines) + b"\n")
  src = load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=str(m))
  v = src.validation
  assert (v["rows"], v["kept"], v["skipped"]) == (3, 2, {"malformed_row": 1})
  assert re.search(r"row 1: malformed_row: not UTF-8 at byte offset \d+", v["examples"]["malformed_row"])
  bad = json.dumps(_fc_rows()).encode("utf-8").replace(b"Feedback", b"Feedb\xffack", 1)
  path = _write(tmp_path / "j", "new_feedback_collection.json", bad)
  with pytest.raises(ValueError, match=re.escape(path) + r": not UTF-8 at byte offset "
                                       + str(bad.index(b"\xff"))):
    load_split("feedback_collection", data_dir=str(tmp_path / "d2"), manual_dir=str(tmp_path / "j"))


def test_duplicates_are_counted_or_dropped_and_fractional_labels_rejected(tmp_path):
  rows = _fc_rows()
  frac = dict(rows[0], orig_score="3.5")
  path = _write(tmp_path / "m", "new_feedback_collection.json",
                json.dumps(rows + [rows[0], frac]))
  kept = load_split("feedback_collection", data_dir=str(tmp_path / "d"),
                    manual_dir=str(tmp_path / "m"))
  v = kept.validation
  assert (v["rows"], v["kept"], v["duplicates"]) == (5, 4, 1)
  assert v["skipped"] == {"fractional_score": 1}
  assert "orig_score='3.5' is not a score" in v["examples"]["fractional_score"]
  deduped = load_split("feedback_collection", data_dir=str(tmp_path / "d"),
                       manual_dir=str(tmp_path / "m"), dedup=True)
  v = deduped.validation
  assert (v["kept"], v["duplicates"], v["skipped"]) == (3, 1, {"duplicate": 1,
                                                              "fractional_score": 1})
  assert path in v["examples"]["duplicate"]


def test_an_edited_data_file_is_prepared_again(tmp_path):
  """Before: the old prepared TFDS copy was reused after the file changed."""
  m = tmp_path / "m"
  path = _write(m, "new_feedback_collection.json", json.dumps(_fc_rows()))
  assert len(load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=str(m))) == 3
  assert len(load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=str(m))) == 3
  _write(m, "new_feedback_collection.json", json.dumps(_fc_rows()[:2]))
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  again = load_split("feedback_collection", data_dir=str(tmp_path / "d"), manual_dir=str(m))
  assert len(again) == 2 and again.validation["rows"] == 2
