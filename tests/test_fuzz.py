"""Property-based tests (hypothesis): record validation and the output parsers on arbitrary input
never raise anything but the documented error, and never emit a record or parse that breaks the
schema."""
import json
import math

from hypothesis import HealthCheck, given, settings, strategies as st

from real_jax.data import records
from real_jax.judge import scores

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text = st.text(max_size=60) | st.just("") | st.text(min_size=2000, max_size=3000)
_score = (st.none() | st.integers(-3, 10) | st.floats(allow_nan=True, allow_infinity=True)
          | st.text(max_size=6) | st.sampled_from(["4", " 5 ", "3.5", "four", "", "nan", "1e400"])
          | st.lists(st.integers(0, 6) | st.text(max_size=3) | st.none(), max_size=4)
          | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.booleans())
_fields = ["orig_instruction", "orig_response", "orig_reference_answer", "orig_criteria",
           "orig_score1_description", "orig_score2_description", "orig_score3_description",
           "orig_score4_description", "orig_score5_description", "orig_score", "orig_feedback",
           "instruction", "gpt4_score", "human_score", "output", "response"]
_row = (st.fixed_dictionaries({}, optional={k: (_score if "score" in k and "description" not in k
                                                else _text | st.none() | st.integers())
                                            for k in _fields})
        | st.lists(st.integers(), max_size=3) | st.text(max_size=20) | st.none() | st.integers())

_SCHEMA = {"id": str, "source": str, "prompt": str, "instruction": str, "response": str,
           "reference_answer": str, "rubric": str, "target": float, "target_int": int,
           "scores": list, "feedback": str, "feedback_score": int, "extra": str}


@SETTINGS
@given(st.lists(_row, max_size=6), st.sampled_from(records.GROUND_TRUTHS), st.booleans())
def test_record_validation_never_crashes_and_emits_only_schema_records(rows, truth, dedup):
  report = records.ValidationReport(dataset="fuzz", split="train", files=["f.json"])
  opts = records.RecordOptions(ground_truth=truth, max_prompt_chars=5000)
  out = list(records.validated_records(enumerate(rows), source="fuzz", split="train",
                                       path="f.json", options=opts, report=report, dedup=dedup))
  assert report.rows == len(rows) and report.kept == len(out)
  assert report.kept + sum(report.skipped.values()) == len(rows)
  assert set(report.skipped) <= set(records.REASONS)
  for rec in out:
    assert set(rec) == set(_SCHEMA)
    for k, t in _SCHEMA.items():
      assert isinstance(rec[k], t), (k, rec[k])
    assert 1.0 <= rec["target"] <= 5.0 and math.isfinite(rec["target"])
    assert rec["target_int"] in (-1, 1, 2, 3, 4, 5)
    assert rec["scores"] and all(1.0 <= s <= 5.0 for s in rec["scores"])
    assert rec["feedback_score"] in (-1, 1, 2, 3, 4, 5)
    assert rec["response"].strip() and len(rec["prompt"]) <= 5000
    json.loads(rec["extra"])


@SETTINGS
@given(st.lists(st.binary(max_size=80) | st.just(b"{}") | st.just(b"[1, 2]"), max_size=5))
def test_reading_arbitrary_jsonl_bytes_counts_or_names_the_problem(tmp_path_factory, lines):
  """Never raises: every non-blank line is one row, in order, either its parsed JSON value or
  an `InvalidRowError("malformed_row")` naming why (so the caller counts it); nothing is
  dropped and nothing is invented."""
  content = b"\n".join(lines)
  path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
  path.write_bytes(content)
  want = []
  for line in content.splitlines():
    if not line.strip():
      continue
    try:
      want.append(("ok", json.loads(line.decode("utf-8"))))
    except (UnicodeDecodeError, json.JSONDecodeError):
      want.append(("bad", None))
  got = list(records.read_rows(str(path)))
  assert [i for i, _ in got] == list(range(len(want)))
  for (_, row), (kind, value) in zip(got, want):
    if kind == "bad":
      assert isinstance(row, records.InvalidRowError) and row.reason == "malformed_row"
      assert "UTF-8" in str(row) or "does not parse" in str(row)
    else:
      assert not isinstance(row, records.InvalidRowError)
      assert json.dumps(row) == json.dumps(value)  # (NaN == NaN as text)


_parts = st.sampled_from(["So the overall score is", "[RESULT]", " ", "0", "1", "4", "5", "6",
                          "10", "4.5", "4.", "\n", "é", "score", "  So the overall score is 3"])


@SETTINGS
@given(st.lists(_parts | st.text(max_size=10), max_size=12),
       st.sampled_from(["score_phrase", "result"]))
def test_parse_text_on_arbitrary_text(pieces, fmt):
  text = "".join(pieces)
  p = scores.parse_text(text, fmt)
  assert p.status in ("ok", "bad_score", "no_delimiter", "delimiter_only")
  assert (p.score is not None) == (p.status == "ok")
  if p.status == "ok":
    assert p.score in (1, 2, 3, 4, 5)
  delim = scores.as_output_format(fmt).delimiter
  if delim not in text:
    assert p.status == "no_delimiter"


_ST = scores.ScoreTokens(token_ids=(16, 17, 18, 19, 20), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                         delimiter_ids=(5, 6, 7), eos_id=2)


@SETTINGS
@given(st.lists(st.sampled_from([2, 5, 6, 7, 15, 16, 17, 18, 19, 20, 21, 0, 99]), max_size=24),
       st.none() | st.integers(0, 30))
def test_parse_generation_on_arbitrary_token_ids(ids, length):
  p = scores.parse_generation(ids, _ST, length=length)
  n = len(ids[:length] if length is not None else ids)
  assert p.status in ("ok", "bad_score", "no_delimiter", "truncated", "delimiter_only")
  assert (p.score is not None) == (p.status == "ok")
  if p.status == "ok":
    assert p.score in (1, 2, 3, 4, 5)
  assert 0 <= p.n_valid <= n
