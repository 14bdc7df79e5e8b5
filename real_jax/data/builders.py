"""TFDS builders for the five real judge datasets, read from files the user put in a manual_dir.

Nothing is downloaded. Each builder looks for its file in `manual_dir` or `manual_dir/<name>/`
(first match of the names below; `source_file=` overrides), reads JSON (an array of rows),
JSONL or parquet, validates every row (`real_jax.data.records`), and writes array_record files
with the common record schema.

| builder             | split | files looked for                                   | ground truth     |
|---------------------|-------|----------------------------------------------------|------------------|
| feedback_collection | train | new_feedback_collection.json (HF prometheus-eval/  | orig_score       |
|                     |       | Feedback-Collection), feedback_collection.{json,   |                  |
|                     |       | jsonl,parquet}                                     |                  |
| feedback_bench      | test  | feedback_collection_ood_test.json (Prometheus/     | orig_score if    |
|                     |       | TRACT eval file), new_feedback_bench.json,         | present, else    |
|                     |       | feedback_bench.{json,jsonl,parquet}                | mean gpt4_score  |
| flask               | test  | flask_eval.{json,jsonl,parquet}                    | mean gpt4_score  |
|                     |       |                                                    | (ground_truth=   |
|                     |       |                                                    | "human": human)  |
| vicuna_bench        | test  | vicuna_eval.{json,jsonl,parquet}                   | mean gpt4_score  |
| mt_bench            | test  | mt_bench_eval.{json,jsonl,parquet}                 | mean gpt4_score  |

Feedback Collection/Bench rows with the orig_* fields get their prompt built from those fields;
rows with only the prebuilt `instruction` (FLASK, MT Bench, Vicuna Bench, TRACT's Feedback Bench)
are split into sections and rebuilt with the same template (so the stock "[RESULT]" format line
becomes the configured one).
"""
from __future__ import annotations

import os
from typing import Any

import tensorflow_datasets as tfds

from real_jax.data import records as records_lib
from real_jax.data.tfds_base import JudgeBuilderBase, JudgeBuilderConfig

__all__ = ["FeedbackCollection", "FeedbackBench", "Flask", "VicunaBench", "MtBench",
    "REAL_BUILDERS"]

_CONFIGS = [JudgeBuilderConfig(name="score_phrase", output_format="score_phrase"),
            JudgeBuilderConfig(name="result", output_format="result")]


def _variants(*stems: str) -> tuple[str, ...]:
  return tuple(f"{s}.{ext}" for s in stems for ext in ("json", "jsonl", "parquet"))


class _RealJudgeBuilder(JudgeBuilderBase, skip_registration=True):
  """A real dataset from one local file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prometheus absolute-grading template, validated rows."}
  BUILDER_CONFIGS = _CONFIGS
  SPLITS = ("test",)
  FILE_CANDIDATES: tuple[str, ...] = ()

  def data_file(self, manual_dir) -> str:
    """The local file this dataset is prepared from (FileNotFoundError naming what to put where)."""
    src = self.builder_config.source_file
    if src:
      path = src if os.path.isabs(src) else os.path.join(os.fspath(manual_dir or ""), src)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{self.name}: source_file {path} does not exist. "
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      return path
    return records_lib.find_manual_file(manual_dir, self.name, self.FILE_CANDIDATES,
                                        self.MANUAL_DOWNLOAD_INSTRUCTIONS)

  def source_fingerprint(self, manual_dir) -> dict[str, Any]:
    """Path, size and modification time of the data file: a prepared copy is stale when they
    differ from the ones recorded at preparation (`real_jax.data.load_split` re-prepares)."""
    path = os.path.abspath(self.data_file(manual_dir))
    st = os.stat(path)
    return {"path": path, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}

  def _split_generators(self, dl_manager):
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    path = self.data_file(manual_dir)
    self.info.metadata["fingerprint"] = self.source_fingerprint(manual_dir)
    split = self.SPLITS[0]
    return {split: self._generate_from_rows(
        split, records_lib.read_rows(path), path=path,
        ground_truth=self.builder_config.ground_truth)}


class FeedbackCollection(_RealJudgeBuilder):
  """Feedback Collection (Prometheus training set, ~100K rows): orig_* fields, orig_score 1..5."""

  SOURCE = "feedback_collection"
  SPLITS = ("train",)
  FILE_CANDIDATES = ("new_feedback_collection.json",) + _variants("new_feedback_collection",
                                                                  "feedback_collection")[1:]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download new_feedback_collection.json from the Hugging Face dataset "
      "prometheus-eval/Feedback-Collection.")


class FeedbackBench(_RealJudgeBuilder):
  """Feedback Bench (1K rows, unseen rubrics): Prometheus/TRACT eval file or HF Feedback-Bench."""

  SOURCE = "feedback_bench"
  FILE_CANDIDATES = _variants("feedback_collection_ood_test", "new_feedback_bench", "feedback_bench")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download feedback_collection_ood_test.json (the Feedback Bench file TRACT and REAL evaluate "
      "on; Prometheus repository, eval/benchmark/data/) or the Hugging Face dataset "
      "prometheus-eval/Feedback-Bench saved as feedback_bench.json.")


class Flask(_RealJudgeBuilder):
  """FLASK evaluation set (Prometheus/TRACT flask_eval.json): prebuilt prompts, gpt4_score lists,
  human_score (ground_truth="human")."""

  SOURCE = "flask"
  FILE_CANDIDATES = _variants("flask_eval")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download flask_eval.json from the Prometheus repository (eval/benchmark/data/), the file "
      "TRACT and REAL evaluate on.")


class VicunaBench(_RealJudgeBuilder):
  """Vicuna Bench evaluation set (Prometheus/TRACT vicuna_eval.json)."""

  SOURCE = "vicuna_bench"
  FILE_CANDIDATES = _variants("vicuna_eval")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download vicuna_eval.json from the Prometheus repository (eval/benchmark/data/).")


class MtBench(_RealJudgeBuilder):
  """MT Bench evaluation set (Prometheus/TRACT mt_bench_eval.json)."""

  SOURCE = "mt_bench"
  FILE_CANDIDATES = _variants("mt_bench_eval")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download mt_bench_eval.json from the Prometheus repository (eval/benchmark/data/).")


REAL_BUILDERS = {b.SOURCE: b for b in (FeedbackCollection, FeedbackBench, Flask, VicunaBench, MtBench)}
