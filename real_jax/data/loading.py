"""`load_split`: prepare (if needed) and open a judge dataset split as a random-access source.

  src = load_split("synthetic", "train", data_dir="~/tensorflow_datasets")
  src = load_split("flask", "test", data_dir=..., manual_dir="~/prometheus_data",
                   ground_truth="human")
  len(src); src[0]["prompt"], src[0]["target"]

Names: "feedback_collection", "feedback_bench", "flask", "vicuna_bench", "mt_bench",
"synthetic" (alias "synthetic_judge"). Keyword options go to the builder config
(`JudgeBuilderConfig`, and for the synthetic task `SyntheticBuilderConfig`: seed, difficulty,
label_noise, sizes, ...). Default options use the named configs "score_phrase"/"result"; other
options get a config named "<format>-<hash of the options>", so different options never share
prepared files.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from real_jax.data import builders as builders_lib
from real_jax.data import preference_builders as preference_lib
from real_jax.data import synthetic as synthetic_lib
from real_jax.data.tfds_base import config_name
from real_jax.judge import prompts as prompts_lib

__all__ = ["DATASETS", "EVAL_BENCHMARKS", "PREFERENCE_BENCHMARKS", "DEFAULT_SPLIT", "get_builder", "JudgeSource",
    "load_split"]

DATASETS = {**builders_lib.REAL_BUILDERS, "synthetic": synthetic_lib.SyntheticJudge,
            "synthetic_judge": synthetic_lib.SyntheticJudge,
            **preference_lib.PREFERENCE_BUILDERS, **preference_lib.POINTWISE_BUILDERS}
# Reward-model benchmarks whose items are compared (one record per response, `real_jax.preference`).
PREFERENCE_BENCHMARKS = tuple(preference_lib.PREFERENCE_BUILDERS)
EVAL_BENCHMARKS = ("feedback_bench", "flask", "vicuna_bench", "mt_bench")
DEFAULT_SPLIT = {name: cls.SPLITS[0] for name, cls in DATASETS.items()}


def get_builder(name: str, *, data_dir: str | os.PathLike,
                output_format: prompts_lib.OutputFormat | str = prompts_lib.OutputFormat.SCORE_PHRASE,
                **options: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder for dataset `name` with the given config options (not prepared)."""
  if name not in DATASETS:
    raise ValueError(f"unknown judge dataset {name!r}; expected one of {sorted(DATASETS)}")
  cls = DATASETS[name]
  fmt = prompts_lib.as_output_format(output_format).value
  valid = set(cls.CONFIG_CLASS(name="tmp").options_dict())
  unknown = set(options) - valid
  if unknown:
    raise TypeError(f"unknown option(s) {sorted(unknown)} for {name}; valid: {sorted(valid)}")
  cname = config_name(cls.CONFIG_CLASS, fmt, options)
  if cname == fmt:
    config: Any = cname
  else:
    config = cls.CONFIG_CLASS(name=cname, output_format=fmt, **options)
  return cls(data_dir=os.fspath(os.path.expanduser(data_dir)), config=config)


class JudgeSource(Sequence):
  """Random-access judge records (dicts of str / float / int / np.ndarray) over a TFDS split."""

  def __init__(self, data_source, *, name: str, split: str, info: tfds.core.DatasetInfo):
    self._ds = data_source
    self.name = name
    self.split = split
    self.info = info

  @property
  def validation(self) -> Mapping[str, Any]:
    """The stored validation report of this split (rows, kept, skipped by reason)."""
    base = self.split.split("[")[0]
    return dict(self.info.metadata.get("validation", {}).get(base, {}))

  def __len__(self) -> int:
    return len(self._ds)

  @staticmethod
  def _decode(ex: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in ex.items():
      if isinstance(v, bytes):
        v = v.decode("utf-8")
      elif isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
      elif isinstance(v, np.generic):
        v = v.item()
      out[k] = v
    return out

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(index)
    return self._decode(self._ds[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    idx = [int(i) for i in indices]
    if hasattr(self._ds, "__getitems__"):
      return [self._decode(ex) for ex in self._ds.__getitems__(idx)]
    return [self[i] for i in idx]

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"JudgeSource({self.name}/{self.split}, {len(self)} records)"


def _is_stale(builder, manual_dir: str | None) -> bool:
  """A prepared copy whose source file changed (size or mtime) since it was prepared."""
  recorded = builder.info.metadata.get("fingerprint")
  try:
    now = builder.source_fingerprint(manual_dir)
  except FileNotFoundError:
    return False  # the prepared copy is all there is (the file moved away): keep using it
  if recorded == now:
    return False
  logging.warning("%s: %s changed since it was prepared (%s -> %s); preparing it again",
                  builder.name, now["path"], recorded, now)
  return True


def load_split(name: str, split: str | None = None, *, data_dir: str | os.PathLike,
               manual_dir: str | os.PathLike | None = None,
               output_format: prompts_lib.OutputFormat | str = prompts_lib.OutputFormat.SCORE_PHRASE,
               prepare: bool = True, **options: Any) -> JudgeSource:
  """Prepares (once) and opens `split` of judge dataset `name` as a `JudgeSource`.

  Args:
    name: dataset name (see DATASETS).
    split: split name (TFDS slicing like "train[:100]" works); default: the dataset's only split
      (train for feedback_collection and synthetic, test for the benchmarks).
    data_dir: where prepared TFDS data lives.
    manual_dir: folder with the downloaded files (real datasets); see `builders`.
    output_format: "score_phrase" (default) or "result".
    prepare: build the dataset if it is not prepared yet (else raise if missing).
    **options: builder config options (on_invalid, ground_truth, max_prompt_chars, ...; for the
      synthetic task also seed, difficulty, label_noise, n_eval_graders, cot_error_rate, sizes).
  """
  builder = get_builder(name, data_dir=data_dir, output_format=output_format, **options)
  if split is None:
    split = DEFAULT_SPLIT[name]
  base = split.split("[")[0]
  if base not in builder.SPLITS:
    raise ValueError(f"{name} has splits {list(builder.SPLITS)}, not {base!r}")
  manual = (os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
            if manual_dir is not None else None)
  if (builder.is_prepared() and hasattr(builder, "source_fingerprint")
      and _is_stale(builder, manual)):
    shutil.rmtree(builder.data_dir)
    builder = get_builder(name, data_dir=data_dir, output_format=output_format, **options)
  if not builder.is_prepared():
    if not prepare:
      raise FileNotFoundError(f"{name} ({builder.builder_config.name}) is not prepared in "
                              f"{builder.data_dir}; call with prepare=True")
    dl_config = tfds.download.DownloadConfig(manual_dir=manual)
    builder.download_and_prepare(download_config=dl_config)
  return JudgeSource(builder.as_data_source(split), name=name, split=split, info=builder.info)
