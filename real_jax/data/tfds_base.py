"""Shared TFDS machinery for the judge datasets: builder config, features, validated generation.

Datasets are written as array_record files and read back with `tfds.data_source` /
`builder.as_data_source(split)` (random access, no TensorFlow; docs/architecture.md, A6).
The validation report of every split (rows read, kept, skipped by reason, first offender per
reason) is printed and stored in the dataset's `metadata.json` (`builder.info.metadata
["validation"][split]`).

Note: the prompt text is stored at build time. A change to the prompt template must bump the
builders' VERSION, or old prepared data will be reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from real_jax.data import records as records_lib
from real_jax.judge import prompts as prompts_lib

__all__ = ["JudgeBuilderConfig", "config_name", "common_features", "JudgeBuilderBase"]


@dataclasses.dataclass
class JudgeBuilderConfig(tfds.core.BuilderConfig):
  """Options shared by every judge dataset builder.

  Attributes:
    output_format: "score_phrase" (default) or "result"; the prompt's format instruction.
    on_invalid: "skip" (count by reason) or "raise" (InvalidRowError naming file and row).
    ground_truth: "auto" (orig_score if the row has it, else the mean of gpt4_score),
      "orig_score", "gpt4" (mean of gpt4_score) or "human" (mean of human_score; FLASK).
    max_prompt_chars: skip prompts longer than this many characters (None: no limit).
    max_prompt_tokens: skip prompts whose chat-rendered length exceeds this (needs
      tokenizer_dir). The batcher applies the token limit as well, per batch config.
    tokenizer_dir: Hugging Face tokenizer directory used for max_prompt_tokens.
    source_file: explicit data file (absolute, or a name inside manual_dir) instead of the
      default file names.
    dedup: skip rows equal to an earlier one (same prompt and score; reason "duplicate");
      without it they are kept and counted.
  """

  output_format: str = prompts_lib.OutputFormat.SCORE_PHRASE.value
  on_invalid: str = "skip"
  ground_truth: str = "auto"
  max_prompt_chars: int | None = None
  max_prompt_tokens: int | None = None
  tokenizer_dir: str | None = None
  source_file: str | None = None
  dedup: bool = False
  scores: str = "1-5"

  def options_dict(self) -> dict[str, Any]:
    """The config's data-relevant fields (everything but the TFDS bookkeeping fields)."""
    skip = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


def config_name(config_cls, output_format: str, options: dict[str, Any]) -> str:
  """"score_phrase"/"result" for default options, else "<format>-<hash of the options>"."""
  defaults = config_cls(name="tmp", output_format=output_format).options_dict()
  merged = {**defaults, **options, "output_format": output_format}
  if merged == defaults:
    return output_format
  blob = json.dumps(merged, sort_keys=True, default=str).encode()
  return f"{output_format}-{hashlib.sha1(blob).hexdigest()[:10]}"


def common_features() -> dict[str, Any]:
  text = tfds.features.Text
  return {
      "id": text(), "source": text(), "prompt": text(),
      "instruction": text(), "response": text(), "reference_answer": text(), "rubric": text(),
      "target": np.float32, "target_int": np.int32,
      "scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      "feedback": text(), "feedback_score": np.int32, "extra": text(),
  }


class JudgeBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: common features, validation report, array_record output."""

  SOURCE: str = ""
  SPLITS: tuple[str, ...] = ()
  CONFIG_CLASS = JudgeBuilderConfig
  MANUAL_DOWNLOAD_INSTRUCTIONS = ""

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  # tfds resolves a packaged builder's code path through importlib_resources, which is not
  # installed (it is an optional backport); the plain file path is all tfds needs (checksums).
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(inspect.getfile(cls))

  # tfds announces "Downloading and preparing dataset Unknown size (download: Unknown size, ...)":
  # nothing is downloaded here, so say what happens instead.
  def _log_download_bytes(self) -> None:
    print(f"[real_jax.data] preparing {self.name} ({self.builder_config.name}) from "
          f"{'local files' if self.SOURCE != 'synthetic' else 'the generator'} into "
          f"{self.data_dir}", flush=True)

  def _log_download_done(self) -> None:
    pass  # the validation report (printed per split) says what was prepared

  def _extra_features(self) -> dict[str, Any]:
    return {}

  def _extra_values(self, row: Any) -> dict[str, Any]:
    return {}

  def _row_id(self, index: int, row: Any) -> str:
    return f"{self.SOURCE}-{index:06d}"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip(),
        features=tfds.features.FeaturesDict({**common_features(), **self._extra_features()}),
        metadata=tfds.core.MetadataDict(),
    )

  def _generate_examples(self, **kwargs):  # required by tfds; splits use _generate_from_rows
    raise NotImplementedError

  def _record_options(self, ground_truth: str) -> records_lib.RecordOptions:
    cfg = self.builder_config
    prompts_lib.as_output_format(cfg.output_format)
    tokenizer = None
    if cfg.max_prompt_tokens is not None:
      if not cfg.tokenizer_dir:
        raise ValueError(f"{self.name}: max_prompt_tokens needs tokenizer_dir")
      tokenizer = prompts_lib.load_tokenizer(cfg.tokenizer_dir)
    return records_lib.RecordOptions(output_format=cfg.output_format, ground_truth=ground_truth,
                                     max_prompt_chars=cfg.max_prompt_chars,
                                     max_prompt_tokens=cfg.max_prompt_tokens, tokenizer=tokenizer,
                                     scores=cfg.scores)

  def _generate_from_rows(self, split: str, rows, *, path: str, ground_truth: str
                          ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Validates rows into common records; records the report in info.metadata and prints it."""
    report = records_lib.ValidationReport(dataset=self.name, split=split, files=[path])
    options = self._record_options(ground_truth)
    if isinstance(rows, list):
      rows = enumerate(rows)
    raw = {}

    def keep_raw(it):
      for i, row in it:
        raw["row"] = row
        yield i, row

    for rec in records_lib.validated_records(
        keep_raw(rows), source=self.SOURCE, split=split, path=path, options=options, report=report,
        on_invalid=self.builder_config.on_invalid, id_fn=self._row_id,
        dedup=self.builder_config.dedup):
      rec["scores"] = np.asarray(rec["scores"], np.float32)
      rec.update(self._extra_values(raw["row"]))
      yield rec["id"], rec
    if report.kept == 0:
      raise report.no_usable_rows()
    self.info.metadata.setdefault("validation", {})[split] = report.to_dict()
    self.info.metadata["config"] = json.loads(
        json.dumps(self.builder_config.options_dict(), default=str))
    print(report.summary(), flush=True)
