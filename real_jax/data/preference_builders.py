"""TFDS builders for the reward-model benchmarks judge papers report, from local files.

Nothing is downloaded: export the benchmark's published split to JSONL (e.g.
`datasets.load_dataset("allenai/reward-bench", split="filtered").to_json("rewardbench.jsonl")`)
or parquet and put it in `data.manual_dir` (or `manual_dir/<name>/`). Field names are the
published datasets' (the sources are in each builder's docstring).

A pointwise judge grades every response on its own: each benchmark item becomes one record per
response, all with the same rubric prompt (`PREFERENCE_RUBRIC`, one description per score of the
scale), and columns that tie it back to its item: `group` (the item), `subset` (its subset,
section or domain), `preferred` (1: a chosen / winning response, 0: a rejected one), `style`
(RM-Bench's style index, else -1) and `position` (the response's index in the item). The
record's target is the scale's top score for a preferred response and its bottom score for a
rejected one, so the ordinary correlation table also shows how well ŷ separates them; the
benchmark's own numbers come from `real_jax.preference` (accuracy per subset, ties, headline).

BiGGen-Bench is natively pointwise on 1-5: its records are ordinary judge records with their
own rubric and the human score as the target (`ground_truth`: auto = human_score, else the
GPT-4 score).
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from real_jax.data import records as records_lib
from real_jax.data.builders import _RealJudgeBuilder, _variants
from real_jax.judge.scales import as_scale

__all__ = ["PREFERENCE_RUBRIC", "RewardBench", "RewardBench2", "RMBench", "JudgeBench",
    "PPEPreference", "BiGGenBench", "PREFERENCE_BUILDERS", "POINTWISE_BUILDERS"]

# The rubric every response of a preference benchmark is graded with (5 levels; other scales get
# one description per score, interpolated by rank).
PREFERENCE_RUBRIC = (
    "Is the response helpful, correct, honest and harmless for the instruction?",
    ("The response is unhelpful, wrong or harmful.",
     "The response is mostly unhelpful or contains major errors.",
     "The response is partly helpful, with some errors or omissions.",
     "The response is helpful and mostly correct, with minor issues.",
     "The response is fully helpful, correct and harmless."))


def rubric_fields(scale) -> dict[str, str]:
  """orig_criteria and one orig_score{label}_description per score of `scale`."""
  scale = as_scale(scale)
  criteria, levels = PREFERENCE_RUBRIC
  n = len(scale.labels)
  pick = [levels[round(i * (len(levels) - 1) / (n - 1))] for i in range(n)]
  return {"orig_criteria": criteria,
          **{f"orig_score{lab}_description": d for lab, d in zip(scale.labels, pick)}}


def _text(x: Any) -> str:
  """A prompt or response as text: a string, or a chat (list of {role, content}) joined."""
  if isinstance(x, (list, tuple)):
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" if isinstance(m, dict)
                     else str(m) for m in x)
  if isinstance(x, bytes):
    return x.decode("utf-8")
  return "" if x is None else str(x)


class _PreferenceBuilder(_RealJudgeBuilder, skip_registration=True):
  """One record per response of each benchmark item (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One record per response, graded pointwise."}

  def _extra_features(self):
    return {"group": tfds.features.Text(), "subset": tfds.features.Text(),
            "preferred": np.int32, "style": np.int32, "position": np.int32,
            "group_size": np.int32}

  def _extra_values(self, row):
    return {k: row["_pref"][k] for k in ("group", "subset", "preferred", "style", "position",
                                         "group_size")}

  def _row_id(self, index, row):
    if not isinstance(row, dict) or "_pref" not in row:
      return f"{self.SOURCE}-row{index:06d}"
    return f"{self.SOURCE}-{row['_pref']['group']}-{row['_pref']['position']}"

  def items(self, row: dict, index: int) -> Iterator[tuple[str, str, str, list[tuple[str, int, int]]]]:
    """(group, subset, prompt, [(response, preferred, style)]) of one raw row."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    path = self.data_file(manual_dir)
    self.info.metadata["fingerprint"] = self.source_fingerprint(manual_dir)
    scale = as_scale(self.builder_config.scores)
    rubric = rubric_fields(scale)

    def rows():
      n = 0
      for index, raw in records_lib.read_rows(path):
        if isinstance(raw, records_lib.InvalidRowError) or not isinstance(raw, dict):
          yield n, raw if isinstance(raw, records_lib.InvalidRowError) else \
              records_lib.InvalidRowError("malformed_row", f"row {index} is not an object")
          n += 1
          continue
        try:
          items = list(self.items(raw, index))
        except (KeyError, TypeError, ValueError) as e:
          yield n, records_lib.InvalidRowError("bad_prompt", f"{self.name} row {index}: "
                                               f"missing or malformed field {e}")
          n += 1
          continue
        for published_id, subset, prompt, responses in items:
          for pos, (resp, preferred, style) in enumerate(responses):
            # The item is keyed by its row (published ids may repeat); its id is kept.
            yield n, {"orig_instruction": prompt, "orig_response": resp,
                      "orig_reference_answer": "", **rubric,
                      "orig_score": str(scale.hi if preferred else scale.lo),
                      "idx": str(published_id),
                      "_pref": {"group": f"{index:07d}", "subset": str(subset),
                                "preferred": int(preferred), "style": int(style),
                                "position": pos, "group_size": len(responses)}}
            n += 1

    return {"test": self._generate_from_rows("test", rows(), path=path, ground_truth="orig_score")}


class RewardBench(_PreferenceBuilder):
  """RewardBench v1 (HF allenai/reward-bench, split "filtered"; github.com/allenai/reward-bench):
  prompt, chosen, rejected, subset, id."""

  SOURCE = "rewardbench"
  FILE_CANDIDATES = _variants("rewardbench", "reward_bench", "filtered")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Export the benchmark: datasets.load_dataset("allenai/reward-bench", split="filtered")'
      '.to_json("rewardbench.jsonl"), into data.manual_dir.')

  def items(self, row, index):
    yield (row.get("id", index), row["subset"], _text(row["prompt"]),
           [(_text(row["chosen"]), 1, -1), (_text(row["rejected"]), 0, -1)])


class RewardBench2(_PreferenceBuilder):
  """RewardBench 2 (HF allenai/reward-bench-2, split "test"; github.com/allenai/reward-bench,
  rewardbench/utils.py): id, prompt, chosen (list), rejected (list), num_correct,
  num_incorrect, subset (Factuality, Precise IF, Math, Safety, Focus, Ties); best-of-4 (Ties:
  several correct answers)."""

  SOURCE = "rewardbench2"
  FILE_CANDIDATES = _variants("rewardbench2", "reward_bench_2", "reward-bench-2")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Export the benchmark: datasets.load_dataset("allenai/reward-bench-2", split="test")'
      '.to_json("rewardbench2.jsonl"), into data.manual_dir.')

  def items(self, row, index):
    chosen, rejected = row["chosen"], row["rejected"]
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    rejected = [rejected] if isinstance(rejected, str) else list(rejected)
    if not chosen or not rejected:
      raise ValueError("chosen/rejected (empty)")
    yield (row.get("id", index), row["subset"], _text(row["prompt"]),
           [(_text(c), 1, -1) for c in chosen] + [(_text(r), 0, -1) for r in rejected])


class RMBench(_PreferenceBuilder):
  """RM-Bench (HF THU-KEG/RM-Bench; github.com/THU-KEG/RM-Bench, data/total_dataset.json and
  scripts/utils.py): id, prompt, chosen and rejected [concise, detailed plain, detailed
  markdown], domain (chat, code, math, safety-refuse, safety-response; the two safety domains
  are scored as one, as compute_accuracy does)."""

  SOURCE = "rm_bench"
  FILE_CANDIDATES = _variants("rm_bench", "rm-bench", "total_dataset")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put RM-Bench's data/total_dataset.json (github.com/THU-KEG/RM-Bench) or the HF dataset "
      "THU-KEG/RM-Bench exported to rm_bench.jsonl into data.manual_dir.")

  def items(self, row, index):
    chosen, rejected = list(row["chosen"]), list(row["rejected"])
    if len(chosen) != 3 or len(rejected) != 3:
      raise ValueError(f"chosen/rejected ({len(chosen)} and {len(rejected)} styles, not 3)")
    yield (row.get("id", index), str(row["domain"]).split("-")[0], _text(row["prompt"]),
           [(_text(c), 1, i) for i, c in enumerate(chosen)]
           + [(_text(r), 0, i) for i, r in enumerate(rejected)])


class JudgeBench(_PreferenceBuilder):
  """JudgeBench (HF ScalerLab/JudgeBench, splits "gpt" and "claude"; github.com/ScalerLab/
  JudgeBench, utils/metrics.py): pair_id, original_id, source, question, response_model,
  response_A, response_B, label ("A>B" / "B>A"); categories by source: mmlu-pro-* knowledge,
  livebench-reasoning, livebench-math, livecodebench coding."""

  SOURCE = "judgebench"
  FILE_CANDIDATES = _variants("judgebench", "judgebench_gpt", "judgebench_claude")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Export the benchmark: datasets.load_dataset("ScalerLab/JudgeBench", split="gpt")'
      '.to_json("judgebench.jsonl"), into data.manual_dir.')

  def items(self, row, index):
    label = str(row["label"]).replace(" ", "")
    if label not in ("A>B", "B>A"):
      raise ValueError(f"label {row['label']!r} (A>B or B>A)")
    a_wins = label == "A>B"
    source = str(row.get("source", ""))
    source = next((c for p, c in _JUDGEBENCH_CATEGORIES if source.startswith(p)), "other")
    yield (row.get("pair_id", index), source, _text(row["question"]),
           [(_text(row["response_A"]), int(a_wins), -1),
            (_text(row["response_B"]), int(not a_wins), -1)])


_JUDGEBENCH_CATEGORIES = (("mmlu-pro", "knowledge"), ("livebench-reasoning", "reasoning"),
                          ("livebench-math", "math"), ("livecodebench", "coding"))


class PPEPreference(_PreferenceBuilder):
  """PPE's human-preference set (HF lmarena-ai/PPE-Human-Preference-V1, split "test";
  blog.lmarena.ai/blog/2024/preference-proxy-evaluations): question_id, prompt, response_1
  (model_a's), response_2 (model_b's), winner ("model_a" / "model_b"; other values, the ties,
  are skipped and counted as bad_prompt rows)."""

  SOURCE = "ppe"
  FILE_CANDIDATES = _variants("ppe", "ppe_human_preference", "human_preference_v1")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Export the benchmark: datasets.load_dataset("lmarena-ai/PPE-Human-Preference-V1", '
      'split="test").to_json("ppe.jsonl"), into data.manual_dir.')

  def items(self, row, index):
    winner = str(row["winner"])
    if winner not in ("model_a", "model_b"):
      raise ValueError(f"winner {winner!r} (a tie or an unknown value: not scored)")
    a = winner == "model_a"
    yield (row.get("question_id", index), "all", _text(row["prompt"]),
           [(_text(row["response_1"]), int(a), -1), (_text(row["response_2"]), int(not a), -1)])


class BiGGenBench(_RealJudgeBuilder):
  """BiGGen-Bench with judged responses (HF prometheus-eval/BiGGen-Bench-Results, split
  "human_eval"; the prompts' fields as HF prometheus-eval/BiGGen-Bench): id, capability, task,
  system_prompt, input, reference_answer, score_rubric {criteria, score1_description ..
  score5_description}, response, model_name, human_score, gpt4_score (1-5). The target is
  human_score (data.ground_truth=gpt4: gpt4_score)."""

  SOURCE = "biggen_bench"
  FILE_CANDIDATES = _variants("biggen_bench", "biggen_bench_results", "BiGGen-Bench-Results")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Export the judged responses: datasets.load_dataset("prometheus-eval/'
      'BiGGen-Bench-Results", split=...).to_json("biggen_bench.jsonl"), into data.manual_dir.')

  def _extra_features(self):
    return {"subset": tfds.features.Text()}

  def _extra_values(self, row):
    return {"subset": str(row.get("capability", ""))}

  def _split_generators(self, dl_manager):
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    path = self.data_file(manual_dir)
    self.info.metadata["fingerprint"] = self.source_fingerprint(manual_dir)
    scale = as_scale(self.builder_config.scores)
    if len(scale.labels) != 5:
      raise ValueError(f"biggen_bench: its rubrics and scores are 1-5; a judge on scores "
                       f"{scale.spec} needs a 5-level scale (e.g. 1-5, 0-4)")
    lo, hi = scale.lo, scale.hi
    shift = lambda v: None if v is None else [lo + (float(x) - 1) * (hi - lo) / 4 for x in
                                              (v if isinstance(v, (list, tuple)) else [v])]

    def rows():
      for index, raw in records_lib.read_rows(path):
        if not isinstance(raw, dict):
          yield index, raw
          continue
        rubric = raw.get("score_rubric") or {}
        if isinstance(rubric, str):
          rubric = json.loads(rubric)
        system = _text(raw.get("system_prompt"))
        yield index, {
            "orig_instruction": (f"{system}\n\n" if system else "") + _text(raw.get("input")),
            "orig_response": _text(raw.get("response")),
            "orig_reference_answer": _text(raw.get("reference_answer")),
            "orig_criteria": rubric.get("criteria"),
            **{f"orig_score{lab}_description": rubric.get(f"score{k + 1}_description")
               for k, lab in enumerate(scale.labels)},
            "human_score": shift(raw.get("human_score")),
            "gpt4_score": shift(raw.get("gpt4_score")),
            "capability": raw.get("capability", "")}

    mode = self.builder_config.ground_truth
    mode = "human" if mode == "auto" else mode
    return {"test": self._generate_from_rows("test", rows(), path=path, ground_truth=mode)}


PREFERENCE_BUILDERS = {b.SOURCE: b for b in (RewardBench, RewardBench2, RMBench, JudgeBench,
                                             PPEPreference)}
POINTWISE_BUILDERS = {BiGGenBench.SOURCE: BiGGenBench}
