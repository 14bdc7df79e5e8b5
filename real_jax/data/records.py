"""The common judge-record schema, row validation with skip counts, and local file readers.

Every dataset (the five real ones and the synthetic task) becomes records with these fields:

  id              str    unique within the dataset ("<source>-<row index>" for real files)
  source          str    dataset name ("feedback_collection", "flask", "synthetic", ...)
  prompt          str    the judge prompt text (before the chat template), in the configured
                         output format (`real_jax.judge.prompts.build_judge_prompt`)
  instruction, response, reference_answer, rubric
                  str    the prompt's sections, so a prompt can be rebuilt in another format
  target          float  ground truth: orig_score (Feedback Collection/Bench) or the mean of the
                         grader scores (gpt4_score; FLASK optionally human_score)
  target_int      int    target as an int when it is a score of the scale, else -1 (a mean like 3.67)
  scores          float[] the raw grader scores the target was computed from
  feedback        str    demonstration CoT (e.g. GPT-4's feedback) *without* its final
                         "So the overall score is N" / "[RESULT] N"; "" if none
  feedback_score  int    the score that demonstration concludes (a score of the scale), -1 if none
  extra           str    JSON with dataset-specific fields (idx, criteria, category, human_score...)

An SFT target is `build_target_text(feedback, feedback_score or target_int)`.

Validation: each row is checked and, if bad, skipped and counted under one reason in `REASONS`
(or a `InvalidRowError` naming file, row and field is raised when `on_invalid="raise"`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Iterator, Mapping, Sequence

from real_jax.judge import prompts as prompts_lib
from real_jax.judge.scales import DEFAULT_SCALE, ScoreScale, as_scale

__all__ = ["REASONS", "GROUND_TRUTHS", "NoUsableRowsError", "InvalidRowError", "ValidationReport",
    "find_manual_file", "read_rows", "parse_scores", "target_int", "ground_truth_scores",
    "RecordOptions", "EXTRA_KEYS", "make_record", "validated_records"]

REASONS = (
    "malformed_row",       # not a JSON object / unreadable line
    "bad_prompt",          # orig_* fields incomplete, or prebuilt instruction not in Prometheus layout
    "empty_response",      # the response to grade is empty
    "missing_score",       # no ground-truth score field (or an empty list)
    "unparsable_score",    # a score that is not a number
    "score_out_of_range",  # a score outside the scale's [lo, hi] (default [1, 5])
    "fractional_score",    # orig_score (a label of the scale) that is not one of its scores
    "prompt_too_long",     # over max_prompt_chars / max_prompt_tokens
    "duplicate",           # the same prompt, response and score as an earlier row (dedup=True)
)

GROUND_TRUTHS = ("auto", "orig_score", "gpt4", "human")


class NoUsableRowsError(ValueError):
  """Every row of a split's file was rejected: names the file, the reasons and their counts."""


class InvalidRowError(ValueError):
  """A row failed validation (raised with on_invalid="raise"; otherwise counted)."""

  def __init__(self, reason: str, detail: str, *, where: str = ""):
    assert reason in REASONS, reason
    self.reason = reason
    self.detail = detail
    self.where = where
    super().__init__(f"{where}: {reason}: {detail}" if where else f"{reason}: {detail}")


@dataclasses.dataclass
class ValidationReport:
  """Counts of rows read / kept / skipped by reason, for one split of one dataset."""

  dataset: str
  split: str
  files: list[str] = dataclasses.field(default_factory=list)
  rows: int = 0
  kept: int = 0
  duplicates: int = 0  # rows equal to an earlier one (kept unless dedup; then also skipped)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, str] = dataclasses.field(default_factory=dict)  # first offender per reason

  def skip(self, err: InvalidRowError) -> None:
    self.skipped[err.reason] += 1
    self.examples.setdefault(err.reason, str(err)[:300])

  def to_dict(self) -> dict[str, Any]:
    return {"dataset": self.dataset, "split": self.split, "files": list(self.files),
            "rows": self.rows, "kept": self.kept, "duplicates": self.duplicates,
            "skipped": {r: int(self.skipped[r]) for r in REASONS if self.skipped[r]},
            "examples": dict(self.examples)}

  def summary(self) -> str:
    sk = ", ".join(f"{r}={n}" for r, n in self.to_dict()["skipped"].items()) or "none"
    dup = f"; {self.duplicates} duplicate rows" if self.duplicates else ""
    return (f"[real_jax.data] {self.dataset}/{self.split}: read {self.rows} rows from "
            f"{', '.join(os.path.basename(f) for f in self.files) or '-'}; kept {self.kept}; "
            f"skipped {sum(self.skipped.values())} ({sk}){dup}")

  def no_usable_rows(self) -> NoUsableRowsError:
    counts = ", ".join(f"{r} {n}" for r, n in self.to_dict()["skipped"].items()) or "no rows"
    first = next(iter(self.examples.values()), "")
    files = ", ".join(self.files) or "-"
    return NoUsableRowsError(
        f"{self.dataset}/{self.split}: none of the {self.rows} rows of {files} is usable "
        f"({counts}){'; first: ' + first if first else ''}. Fix the file, or check the "
        "dataset's ground_truth option and the fields it reads")


# --- files -------------------------------------------------------------------------------------

def find_manual_file(manual_dir: str | os.PathLike | None, dataset: str, candidates: Sequence[str],
                     instructions: str) -> str:
  """The first of `candidates` found in `manual_dir` or `manual_dir/<dataset>/`; else a
  FileNotFoundError that names the expected file(s) and the folder to put them in."""
  if manual_dir is not None:
    for folder in (os.fspath(manual_dir), os.path.join(os.fspath(manual_dir), dataset)):
      for name in candidates:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
          return path
  where = os.fspath(manual_dir) if manual_dir is not None else "<manual_dir not set>"
  raise FileNotFoundError(
      f"{dataset}: no data file found. Put one of {list(candidates)} in {where} (or in "
      f"{os.path.join(where, dataset)}). {instructions} Nothing is downloaded at run time; pass "
      "the folder as manual_dir=... (load_split) or --manual_dir.")


def read_rows(path: str) -> Iterator[tuple[int, Any]]:
  """Yields (row index, row) from a JSON array / JSON object of rows / JSONL / parquet file.

  A JSONL line that does not parse yields an `InvalidRowError("malformed_row")` as its row, so
  the caller counts it; a JSON file that does not parse at all raises (it has no rows).
  """
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # pulled in by tensorflow-datasets
    pf = pq.ParquetFile(path)
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
      for row in batch.to_pylist():
        yield i, row
        i += 1
    return
  with open(path, "rb") as f:
    raw = f.read()
  if not path.endswith(".jsonl"):
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: not UTF-8 at byte offset {e.start} ({raw[e.start:e.start + 4]!r});"
                       " re-save the file as UTF-8") from None
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      if not _looks_like_jsonl(text):
        raise ValueError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
                         f"(char {e.pos})") from None
      data = None  # JSONL with a .json name (some releases): read it line by line below
    if data is not None:
      if isinstance(data, dict):
        rows = data.get("data") or data.get("rows") or data.get("train") or data.get("test")
        if not isinstance(rows, list):
          raise ValueError(f"{path}: a JSON object without a list of rows under data/rows/train/test")
        data = rows
      if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
      yield from enumerate(data)
      return
  offset, i = 0, 0
  for line in raw.splitlines(keepends=True):
    start, offset = offset, offset + len(line)
    if not line.strip():
      continue
    try:
      yield i, json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
      yield i, InvalidRowError("malformed_row", f"not UTF-8 at byte offset {start + e.start}")
    except json.JSONDecodeError as e:
      yield i, InvalidRowError("malformed_row", f"line does not parse as JSON ({e.msg})")
    i += 1


def _looks_like_jsonl(text: str) -> bool:
  """A file whose first non-empty line is a whole JSON object (JSON Lines), not a broken array."""
  first = next((l for l in text.splitlines() if l.strip()), "")
  try:
    return isinstance(json.loads(first), dict)
  except json.JSONDecodeError:
    return False


# --- scores ------------------------------------------------------------------------------------

def parse_scores(value: Any, field: str, scale: ScoreScale | str | None = None) -> list[float]:
  """Scores from a scalar, a numeric string or a list of them; each must be a number in
  [lo, hi] of `scale` (default 1-5)."""
  scale = as_scale(scale)
  if value is None or (isinstance(value, (list, tuple)) and len(value) == 0) or (
      isinstance(value, str) and not value.strip()):
    raise InvalidRowError("missing_score", f"{field} is missing or empty")
  items = list(value) if isinstance(value, (list, tuple)) else [value]
  out = []
  for x in items:
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
      x = x.item()  # numpy scalar (parquet)
    if isinstance(x, bool) or x is None:
      raise InvalidRowError("unparsable_score", f"{field}={value!r} is not a number")
    try:
      v = float(x.strip() if isinstance(x, str) else x)
    except (TypeError, ValueError):
      raise InvalidRowError("unparsable_score", f"{field}={value!r} is not a number") from None
    if not math.isfinite(v):
      raise InvalidRowError("unparsable_score", f"{field}={value!r} is not finite")
    if not scale.within(v):
      raise InvalidRowError("score_out_of_range",
                            f"{field}={value!r} is outside [{scale.lo}, {scale.hi}]")
    out.append(v)
  return out


def target_int(target: float, scale: ScoreScale | str | None = None) -> int:
  """target as int when it is a score of `scale` (default 1-5: integral), else -1."""
  if abs(target - round(target)) >= 1e-6 or not as_scale(scale).contains(round(target)):
    return -1
  return int(round(target))


def _first_text(x: Any) -> str:
  if x is None:
    return ""
  if isinstance(x, (list, tuple)):
    return _first_text(x[0]) if x else ""
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def ground_truth_scores(row: Mapping[str, Any], mode: str,
                        scale: ScoreScale | str | None = None) -> list[float]:
  """The grader scores of a row under ground-truth `mode` (see GROUND_TRUTHS) on `scale`."""
  scale = as_scale(scale)
  if mode not in GROUND_TRUTHS:
    raise ValueError(f"ground_truth must be one of {GROUND_TRUTHS}, got {mode!r}")
  if mode == "auto":
    if row.get("orig_score") is None and row.get("gpt4_score") is None:
      raise InvalidRowError("missing_score", "neither orig_score (Feedback Collection / Bench) "
                            "nor gpt4_score (the benchmarks) is present")
    mode = "orig_score" if row.get("orig_score") is not None else "gpt4"
  field = {"orig_score": "orig_score", "gpt4": "gpt4_score", "human": "human_score"}[mode]
  scores = parse_scores(row.get(field), field, scale)
  if field == "orig_score" and not all(scale.contains(v) for v in scores):
    raise InvalidRowError("fractional_score", f"orig_score={row.get(field)!r} is not a score "
                          f"(this source's labels are the scores {scale.spec})")
  return scores


# --- the common record -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordOptions:
  output_format: str = prompts_lib.OutputFormat.SCORE_PHRASE.value
  ground_truth: str = "auto"
  max_prompt_chars: int | None = None
  max_prompt_tokens: int | None = None
  tokenizer: Any = None  # needed for max_prompt_tokens (counts chat-rendered tokens)
  scores: str = DEFAULT_SCALE.spec  # the score scale (judge.scales): "1-5", "0-4", "1-10", ...


EXTRA_KEYS = ("idx", "criteria", "category", "response_source", "human_score", "gpt4_score",
              "orig_score", "true_score")


def make_record(row: Any, *, source: str, row_id: str, options: RecordOptions) -> dict[str, Any]:
  """Validates one raw row and returns the common record; raises `InvalidRowError`."""
  if isinstance(row, InvalidRowError):
    raise row
  if not isinstance(row, Mapping):
    raise InvalidRowError("malformed_row", f"row is a {type(row).__name__}, not an object")
  scale = as_scale(options.scores)
  try:
    fields = prompts_lib.fields_from_record(row, scale)
  except ValueError as e:
    raise InvalidRowError("bad_prompt", str(e)) from None
  if not fields.response.strip():
    raise InvalidRowError("empty_response", "the response to evaluate is empty")
  scores = ground_truth_scores(row, options.ground_truth, scale)
  target = float(sum(scores) / len(scores))
  prompt = prompts_lib.render_prompt(fields, output_format=options.output_format, scale=scale)
  if options.max_prompt_chars is not None and len(prompt) > options.max_prompt_chars:
    raise InvalidRowError("prompt_too_long", f"{len(prompt)} chars > {options.max_prompt_chars}")
  if options.max_prompt_tokens is not None:
    if options.tokenizer is None:
      raise ValueError("max_prompt_tokens needs a tokenizer (tokenizer_dir)")
    n = len(prompts_lib.render_chat(options.tokenizer, prompt))
    if n > options.max_prompt_tokens:
      raise InvalidRowError("prompt_too_long", f"{n} tokens > {options.max_prompt_tokens}")
  raw_feedback = _first_text(row.get("orig_feedback")) or _first_text(row.get("gpt4_feedback")) \
      or _first_text(row.get("output"))
  feedback, feedback_score = (prompts_lib.strip_score_suffix(raw_feedback, scale) if raw_feedback
                              else ("", None))
  extra = {}
  for k in EXTRA_KEYS:
    if k in row and row[k] is not None:
      v = row[k]
      extra[k] = v.tolist() if hasattr(v, "tolist") else v
  return {
      "id": row_id,
      "source": source,
      "prompt": prompt,
      "instruction": fields.instruction,
      "response": fields.response,
      "reference_answer": fields.reference_answer,
      "rubric": fields.rubric,
      "target": target,
      "target_int": target_int(target, scale),
      "scores": scores,
      "feedback": feedback,
      "feedback_score": feedback_score if feedback_score is not None else -1,
      "extra": json.dumps(extra, sort_keys=True, default=str),
  }


def validated_records(rows: Iterator[tuple[int, Any]], *, source: str, split: str, path: str,
                      options: RecordOptions, report: ValidationReport, on_invalid: str = "skip",
                      id_fn=None, dedup: bool = False) -> Iterator[dict[str, Any]]:
  """Validates rows, counting skips in `report` (or raising with on_invalid="raise").

  A row equal to an earlier one (same prompt, response and target) is counted in
  `report.duplicates`; with `dedup` it is also skipped (reason "duplicate")."""
  if on_invalid not in ("skip", "raise"):
    raise ValueError(f"on_invalid must be 'skip' or 'raise', got {on_invalid!r}")
  seen: set[int] = set()
  for i, row in rows:
    report.rows += 1
    row_id = id_fn(i, row) if id_fn else f"{source}-{i:06d}"
    try:
      rec = make_record(row, source=source, row_id=row_id, options=options)
    except InvalidRowError as e:
      e.where = f"{path} row {i}"
      e.args = (f"{e.where}: {e.reason}: {e.detail}",)
      if on_invalid == "raise":
        raise
      report.skip(e)
      continue
    key = hash((rec["prompt"], rec["target"]))
    if key in seen:
      report.duplicates += 1
      if dedup:
        report.skip(InvalidRowError("duplicate", "same prompt and score as an earlier row",
                                    where=f"{path} row {i}"))
        continue
    seen.add(key)
    report.kept += 1
    yield rec
