"""Score scales (real_jax.judge.scales): the prompt, the score tokens, parsing, records, the
synthetic 0-4 variant's data, and the exact readout of scores of several tokens (1-10). The 0-4
variant end to end: tests/test_reward_benchmarks.py."""

import numpy as np
import pytest

import real_jax
from real_jax import models, objectives, readout
from real_jax.data import records as records_lib
from real_jax.data import synthetic
from real_jax.judge import prompts, scores
from real_jax.judge.scales import DEFAULT_SCALE, ScoreScale
from real_jax.train import config_lib
from run_helpers import tiny_config, tiny_random_model
from test_judge import _byte_level

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


def test_parse_ranges_and_labels():
  assert ScoreScale.parse("1-5") == DEFAULT_SCALE and DEFAULT_SCALE.values == (1., 2., 3., 4., 5.)
  s = ScoreScale.parse("0-4")
  assert s.labels == ("0", "1", "2", "3", "4") and (s.lo, s.hi, s.midpoint) == (0, 4, 2.0)
  assert ScoreScale.parse(" 1 - 10 ").labels[-1] == "10"
  odd = ScoreScale.parse("1,3,5")
  assert odd.spec == "1,3,5" and odd.contains(3) and not odd.contains(2) and odd.within(2)
  assert ScoreScale.parse("0,1").spec == "0-1"
  for bad, says in (("5-1", "exceed"), ("1", "lo-hi"), ("1,1", "increase"), ("a,b", "integer"),
                    ("1,-2", "integer"), ("1,05", "plain decimal"), ("", "lo-hi")):
    with pytest.raises(ValueError, match=says):
      ScoreScale.parse(bad)


def test_prompt_on_another_scale_and_default_unchanged():
  rec = {"orig_instruction": "Add.", "orig_response": "4", "orig_reference_answer": "4",
         "orig_criteria": "Right?", **{f"orig_score{k}_description": f"d{k}" for k in range(1, 6)}}
  default = prompts.build_judge_prompt(rec)
  assert prompts.build_judge_prompt(rec, scale="1-5") == default
  assert "an integer between 1 and 5" in default and "(Score 5)" in default
  rec04 = {**{k: v for k, v in rec.items() if "score5" not in k}, "orig_score0_description": "d0"}
  text = prompts.build_judge_prompt(rec04, scale="0-4")
  assert "an integer between 0 and 4" in text and "(Score 4)" in text and "a score of 4" in text
  assert "1 and 5" not in text and "(Score 5)" not in text
  assert [l for l in text.splitlines() if l.startswith("Score ")] == [
      f"Score {k}: d{k}" for k in range(5)]
  with pytest.raises(ValueError, match="orig_score0_description"):
    prompts.build_judge_prompt(rec, scale="0-4")
  assert "one of 1, 3, 5" in prompts.PROMETHEUS_ABSOLUTE.scaled("1,3,5").rule2
  # The prebuilt prompt of another scale splits back into its fields.
  assert prompts.split_prometheus_prompt(text).reference_answer == "4"
  assert prompts.build_target_text("x.", 0, scale="0-4") == "x. So the overall score is 0"
  with pytest.raises(ValueError, match="0-4"):
    prompts.build_target_text("x.", 5, scale="0-4")
  assert prompts.strip_score_suffix("ok. So the overall score is 0", "0-4") == ("ok.", 0)
  assert prompts.strip_score_suffix("ok. So the overall score is 0") == ("ok.", None)


@pytest.fixture(scope="module")
def qwen():
  return _byte_level(True)


def test_score_tokens_and_parsing_on_0_4(qwen):
  st = scores.resolve_score_tokens(qwen, scale="0-4")
  assert st.values == (0., 1., 2., 3., 4.) and st.scale.spec == "0-4"
  assert [qwen.decode([t]).strip() for t in st.token_ids] == list("01234")
  assert set(st.token_ids[1:]) <= set(scores.resolve_score_tokens(qwen).token_ids)
  ids = prompts.build_target_ids(qwen, "fine.", 0, score_tokens=st)
  p = scores.parse_generation(ids, st)
  assert (p.status, p.score) == ("ok", 0)
  p5 = scores.parse_generation(prompts.build_target_ids(qwen, "fine.", 5), st)
  assert p5.status == "bad_score"  # 5 is not a score on 0-4
  assert scores.parse_text("a. So the overall score is 0", scale="0-4").score == 0
  assert scores.parse_text("a. So the overall score is 0").status == "bad_score"
  assert scores.parse_text("a. So the overall score is 7", scale="0-9").score == 7


def test_1_10_is_read_over_its_tokens(qwen):
  """With Qwen-style digits "10" is "1" "0": a multi-token scale, parsed score by score."""
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  one, zero = qwen.convert_tokens_to_ids("1"), qwen.convert_tokens_to_ids("0")
  assert st.multi_token and st.sequences[0] == (one,) and st.sequences[-1] == (one, zero)
  assert all(len(c) == 1 for c in st.sequences[:-1]) and zero in st.continuation_ids
  for k in (1, 7, 10):
    ids = prompts.build_target_ids(qwen, "fine.", k, score_tokens=st)
    p = scores.parse_generation(ids, st)
    assert (p.status, p.score, p.score_len) == ("ok", k, 2 if k == 10 else 1)
  for text in ("fine. So the overall score is 17", "fine. So the overall score is 100"):
    p = scores.parse_generation(qwen.encode(text, add_special_tokens=False), st)
    assert p.status == "bad_score", text
  on_1_5 = scores.parse_generation(prompts.build_target_ids(qwen, "x.", 1), st)
  assert on_1_5.score == 1
  with pytest.raises(ValueError, match="more than one token"):
    objectives.ScoreSpec.of(st)


def test_records_on_0_4():
  opts = records_lib.RecordOptions(scores="0-4")
  row = {"orig_instruction": "Add.", "orig_response": "4", "orig_criteria": "Right?",
         **{f"orig_score{k}_description": f"d{k}" for k in range(5)},
         "orig_feedback": "Fine. So the overall score is 0", "orig_score": "0"}
  r = records_lib.make_record(row, source="x", row_id="0", options=opts)
  assert (r["target"], r["target_int"], r["feedback_score"]) == (0.0, 0, 0)
  with pytest.raises(records_lib.InvalidRowError, match="outside \\[0, 4\\]"):
    records_lib.make_record({**row, "orig_score": "5"}, source="x", row_id="0", options=opts)
  assert records_lib.target_int(2.0, "1,3,5") == -1 and records_lib.target_int(3.0, "1,3,5") == 3


def test_synthetic_0_4_is_the_1_5_task_shifted():
  kw = dict(difficulty=0, near_miss_credit=0.5, train_size=64, test_size=16, ood_size=16)
  a = synthetic.generate_all(synthetic.SyntheticConfig(**kw))
  b = synthetic.generate_all(synthetic.SyntheticConfig(scores="0-4", **kw))
  for split in a:
    for ra, rb in zip(a[split], b[split]):
      assert rb["true_score"] == ra["true_score"] - 1 and rb["demo_score"] == ra["demo_score"] - 1
      assert int(rb["orig_score"]) == int(ra["orig_score"]) - 1
      assert rb["expected_score"] == pytest.approx(ra["expected_score"] - 1)
      assert rb["orig_feedback"].endswith(f"is {rb['demo_score']}")
      assert rb["orig_score0_description"] == ra["orig_score1_description"]
  with pytest.raises(ValueError, match="0-4"):
    synthetic.SyntheticConfig(scores="1-10")


def test_config_refuses_a_bad_or_unsupported_scale(shared):
  for bad, says in (("1-", "lo-hi"), ("1-10", "synthetic task")):
    c = tiny_config(shared, "sft", **{"data.scores": bad})
    with pytest.raises(config_lib.ConfigError, match=says):
      config_lib.validate(c, 1)


def test_synthetic_answer_range_and_carry_split():
  """The task knobs of the synthetic study: wrong answers over 0..answer_max (the default draws
  exactly as before), and OOD hard split by the sum (ood_hard="carry")."""
  kw = dict(difficulty=0, train_size=256, test_size=32, ood_size=32)
  base = synthetic.generate_all(synthetic.SyntheticConfig(**kw))
  assert synthetic.generate_all(synthetic.SyntheticConfig(answer_max=8, **kw)) == base
  wide = synthetic.generate_all(synthetic.SyntheticConfig(answer_max=18, **kw))
  answers = [int(a) for r in wide["train"] for a in r["orig_response"].split()[1::2]]
  assert max(answers) > 9 and max(answers) <= 18
  carry = synthetic.generate_all(synthetic.SyntheticConfig(
      ood_hard="carry", **{**kw, "difficulty": 1}))
  sums = lambda r: [eval(e) for e in r["orig_instruction"].split()[-7::2]]  # noqa: S307
  assert all(max(sums(r)) <= 9 for sp in ("train", "test", "test_ood_rubric") for r in carry[sp])
  assert all(min(sums(r)) >= 10 for r in carry["test_ood_hard"])


@pytest.fixture(scope="module")
def tiny_judge(qwen):
  return tiny_random_model(seed=3)


def test_1_10_readout_equals_hand_enumeration(qwen, tiny_judge):
  """Each score's probability on 1-10 (Qwen digits) against a forward pass per score: its
  tokens' probabilities times the probability that no digit follows (so "1" excludes "10")."""
  graphdef, params, mesh = tiny_judge
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  prompt = prompts.render_chat(qwen, "Grade the answer.")
  cots = ["good answer. So the overall score is", "the response is clear helpful. So the overall "
          "score is"]
  resp = [qwen.encode(c, add_special_tokens=False) for c in cots]
  width = max(map(len, resp)) + 3  # right padding after the shorter CoT
  response = np.full((2, width), qwen.pad_token_id, np.int32)
  for i, r in enumerate(resp):
    response[i, :len(r)] = r
  pt = np.tile(np.asarray(prompt, np.int32)[None], (2, 1))
  seqs = readout.build_sequences(pt, np.ones_like(pt, bool), response,
                                 np.array([len(r) for r in resp]), pad_id=qwen.pad_token_id)
  got = np.exp(readout.candidate_log_probs(graphdef, params, seqs, st, mesh))
  digits = [qwen.convert_tokens_to_ids(str(d)) for d in range(10)]
  for i, r in enumerate(resp):
    for k, label in enumerate(st.scale.labels):
      cand = [qwen.convert_tokens_to_ids(ch) for ch in label]  # one token per digit
      ids = np.asarray([prompt + r + cand], np.int32)
      logits = np.asarray(models.forward_logits(graphdef, params, ids, np.ones_like(ids, bool)))
      x = logits[0].astype(np.float64)
      p = np.exp(x - x.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      start = len(prompt) + len(r) - 1  # the last delimiter token predicts the first digit
      want = np.prod([p[start + j, t] for j, t in enumerate(cand)])
      want *= 1.0 - p[start + len(cand), digits].sum()
      assert got[i, k] == pytest.approx(want, rel=2e-4), (i, label)
  assert (got.sum(-1) < 1).all()


def test_judge_grades_on_1_10(qwen, tiny_judge):
  graphdef, params, mesh = tiny_judge
  judge = real_jax.Judge(graphdef, params, qwen, scores="1-10", mesh=mesh, max_prompt_len=64)
  rec = {"instruction": "Add 2 and 2.", "response": "4", "rubric": "[Right?]\n" + "\n".join(
      f"Score {k}: d{k}" for k in range(1, 11))}
  assert "an integer between 1 and 10" in judge.prompt_text(rec)
  g = judge.grade([{"prompt": "Is 2+2=4? Score it."}] * 2, max_new_tokens=6, seed=1)
  for x in g:
    assert sorted(x.score_probs) == [float(k) for k in range(1, 11)]
    assert x.y_hat == pytest.approx(sum(v * p for v, p in x.score_probs.items()), rel=1e-5)
    assert x.score_mass == pytest.approx(sum(x.score_probs.values()), rel=1e-5)
