"""The run's inputs from its config: tokenizer, record sources (with the validation split carved
from training), evaluation splits, prompt buckets and `JudgeBatcher`s; plus a small resumable
iterator over in-memory rows (TRACT self-CoTs)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from real_jax.data import DATASETS, batching, build_synthetic_tokenizer, load_split
from real_jax.judge import prompts as prompts_lib
from real_jax.judge import scales
from real_jax.train import methods as methods_lib
from real_jax.train.config_lib import ConfigError
from real_jax.train.settings import prompt_buckets

__all__ = ["SYNTHETIC_OPTIONS", "SYNTHETIC_EVAL_SPLITS", "PROMETHEUS_EVAL", "load_tokenizer",
    "dataset_options", "eval_entries", "VAL_SEED", "VAL_SPLIT", "Subset", "split_validation",
    "load_sources", "check_eval_sources", "check_context_length", "prompt_buckets",
    "thinking_flag", "data_order_seed", "make_batcher", "delimiter_at_start", "ArrayIterator"]

SYNTHETIC_OPTIONS = ("seed", "difficulty", "label_noise", "n_eval_graders", "cot_error_rate",
                     "near_miss_rate", "near_miss_credit", "ood_hard", "answer_max",
                     "reference_has_answers", "shuffle_items", "ood_rubric_shuffle_response",
                     "train_size", "test_size", "ood_size")
SYNTHETIC_EVAL_SPLITS = ("test", "test_ood_hard", "test_ood_rubric")
PROMETHEUS_EVAL = ("feedback_bench", "flask", "vicuna_bench", "mt_bench")


def load_tokenizer(config, workdir: str):
  """The run's HF tokenizer: data.tokenizer, else (synthetic) one built in the workdir, else the
  model's HF directory. Returns (tokenizer, its directory)."""
  path = config.data.tokenizer
  if not path:
    if config.data.name in ("synthetic", "synthetic_judge"):
      path = os.path.join(workdir, "tokenizer")
      if not os.path.exists(os.path.join(path, "tokenizer.json")):
        build_synthetic_tokenizer(path)
    elif config.model.hf_dir:
      path = config.model.hf_dir
    else:
      raise ValueError("set config.data.tokenizer (a Hugging Face tokenizer directory) or "
                       "config.model.hf_dir")
  return prompts_lib.load_tokenizer(path), path


def dataset_options(config) -> dict[str, Any]:
  opts: dict[str, Any] = {}
  if config.data.name in ("synthetic", "synthetic_judge"):
    opts.update({k: config.data.synthetic[k] for k in SYNTHETIC_OPTIONS})
  if config.data.ground_truth != "auto":
    opts["ground_truth"] = config.data.ground_truth
  if scales.as_scale(config.data.scores) != scales.DEFAULT_SCALE:
    opts["scores"] = scales.as_scale(config.data.scores).spec
  return opts


def eval_entries(config) -> list[tuple[str, str | None, str]]:
  """(dataset, split or None, display name) for every evaluation split of the config."""
  spec = config.eval.splits or config.data.eval_splits
  if not spec:
    if config.data.name in ("synthetic", "synthetic_judge"):
      names = list(SYNTHETIC_EVAL_SPLITS)
    else:
      names = list(PROMETHEUS_EVAL)
  else:
    names = [s.strip() for s in spec.split(",") if s.strip()]
  out = []
  for n in names:
    if ":" in n:
      ds, split = n.split(":", 1)
      out.append((ds, split, f"{ds}:{split}"))
    elif n in DATASETS and n not in ("synthetic", "synthetic_judge"):
      out.append((n, None, n))
    else:
      out.append((config.data.name, n, n))
  return out


VAL_SEED = 20260  # fixed: every run and seed of a study selects on the same validation records
VAL_SPLIT = "val"


class Subset:
  """A read-only view of some records of a source (`len`, indexing), e.g. the validation part."""

  def __init__(self, source, indices: np.ndarray, name: str = ""):
    self.source, self.indices, self.name = source, np.asarray(indices, np.int64), name

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    return self.source[int(self.indices[i])]


def split_validation(source, val_size: int, seed: int = VAL_SEED):
  """(training part, validation part) of a training source: `val_size` records drawn by a seeded
  permutation, disjoint from the rest. val_size 0: (source, None)."""
  if not val_size:
    return source, None
  n = len(source)
  if val_size >= n // 2:
    raise ConfigError(f"config.data.val_size={val_size} leaves too little of the {n} training "
                      f"records; use at most {max(n // 2 - 1, 0)} (or 0 for no validation split)")
  order = np.random.default_rng(seed).permutation(n)
  return (Subset(source, np.sort(order[val_size:]), "train"),
          Subset(source, np.sort(order[:val_size]), VAL_SPLIT))


def load_sources(config, workdir: str, *, train: bool, evaluation: bool):
  """(train source or None, {name: eval source}, validation source or None).

  The validation source is `data.val_size` records carved from the training split
  (`split_validation`); the training source is the rest."""
  data_dir = config.data.data_dir or os.path.join(workdir, "tfds")
  manual = config.data.manual_dir or None
  fmt = config.data.output_format
  opts = dataset_options(config)
  train_src = val_src = None
  if train:
    train_src = load_split(config.data.name, config.data.train_split, data_dir=data_dir,
                           manual_dir=manual, output_format=fmt, **opts)
    train_src, val_src = split_validation(train_src, int(config.data.val_size))
  evals = {}
  if evaluation:
    for ds, split, name in eval_entries(config):
      o = opts if ds == config.data.name else {
          k: v for k, v in opts.items() if k in ("ground_truth", "scores")}
      evals[name] = load_split(ds, split, data_dir=data_dir, manual_dir=manual,
                               output_format=fmt, **o)
  return train_src, evals, val_src


def check_eval_sources(config, evals: Mapping[str, Any], tokenizer, score_tokens) -> None:
  """Before training: every evaluation split has at least one usable item among the ones
  evaluation reads (eval.max_items), else a ConfigError naming the split and why."""
  for name, source in evals.items():
    if config.eval.max_items and len(source) > config.eval.max_items:
      source = [source[i] for i in range(config.eval.max_items)]
    batcher = make_batcher(config, source, tokenizer, score_tokens, batch_size=1,
                           with_targets=False, shuffle=False, num_epochs=1,
                           drop_remainder=False)
    try:
      next(batcher)
    except (batching.TooFewRowsError, StopIteration):
      why = ", ".join(f"{k} {v}" for k, v in sorted(batcher.stats.items())) or "none read"
      raise ConfigError(
          f"evaluation split {name!r} has no usable item of {len(source)} ({why}); raise "
          "data.max_prompt_len, set data.overlong=truncate, or leave the split out of "
          "eval.splits / data.eval_splits") from None


def check_context_length(config, max_positions: int, stages: Sequence[str]) -> None:
  """The longest sequence a run builds (prompt + response, or prompt + SFT target) fits the
  model's context (`max_position_embeddings`), else a ConfigError naming the fields."""
  longest = {"data.max_prompt_len + eval.max_response_len": config.eval.max_response_len}
  if "rl" in stages:
    longest["data.max_prompt_len + rl.max_response_len"] = config.rl.max_response_len
  if any(methods_lib.STAGES.lookup(s).targets for s in stages):
    longest["data.max_prompt_len + data.max_target_len"] = config.data.max_target_len
  for name, response in longest.items():
    total = int(config.data.max_prompt_len) + int(response) + 1  # + the score token
    if total > max_positions:
      raise ConfigError(f"{name} (+1 for the score) = {total} tokens exceeds the model's context "
                        f"of {max_positions} (max_position_embeddings); lower them")


def thinking_flag(config) -> bool | None:
  """`data.enable_thinking` as the chat template's argument ("" -> not passed)."""
  return prompts_lib.thinking_value(config.data.enable_thinking)


def data_order_seed(seed: int, stage: str) -> int:
  """The seed of a stage's record order: apart per run seed (x 1000) and per stage (the rl
  stage: + 17; a supervised stage: + the sum of its name's character codes), so two stages of a
  run never read their records in the same order."""
  return seed * 1000 + (17 if stage == "rl" else sum(map(ord, stage)))


def make_batcher(config, source, tokenizer, score_tokens, *, batch_size: int, with_targets: bool,
                 shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                 drop_remainder: bool = True) -> batching.JudgeBatcher:
  limit = int(config.data.max_prompt_len)
  bc = batching.BatchConfig(
      batch_size=batch_size, buckets=prompt_buckets(config), max_prompt_len=limit,
      seed=seed, shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
      enable_thinking=thinking_flag(config), with_targets=with_targets,
      overlong=config.data.overlong,
      output_format=config.data.output_format,
      completion_buckets=tuple(b for b in (32, 64, 128, 256, 512, 1024, 2048)
                               if b < config.data.max_target_len) + (config.data.max_target_len,),
      max_completion_len=config.data.max_target_len)
  # Every process iterates the whole global batch (same seed, same order): the trainer places
  # it with `sharding.put_global`, so the RL bookkeeping on the host sees every group.
  return batching.JudgeBatcher(source, tokenizer, bc, score_tokens=score_tokens,
                               process_index=0, process_count=1)


def delimiter_at_start(tokenizer, score_tokens) -> tuple[int, ...]:
  """Token ids of the delimiter when the response *starts* with it (RAFT's direct readout),
  checked to be followed by the score tokens exactly as the parser expects."""
  fmt, scale = score_tokens.output_format, score_tokens.scale
  top = scale.hi
  text = prompts_lib.build_target_text("", top, fmt, scale=scale)
  ids = prompts_lib.encode_text(tokenizer, text)
  seq = list(score_tokens.sequences[-1])
  if len(ids) <= len(seq) or ids[-len(seq):] != seq:
    raise ValueError(f"'{text}' does not end with the score tokens {seq}: {ids}")
  return tuple(ids[:-len(seq)])


class ArrayIterator:
  """Deterministic, resumable batches of row indices over `n` in-memory rows (epoch shuffles
  from (seed, epoch)); `state()` / `restore()` like `JudgeBatcher`."""

  def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True):
    if n < batch_size:
      raise ValueError(f"{n} rows cannot fill a batch of {batch_size}; lower the batch size")
    self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
    self.epoch, self.cursor = 0, 0

  def _order(self, epoch):
    return (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
            else np.arange(self.n))

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    if self.cursor + self.batch_size > self.n:
      self.epoch, self.cursor = self.epoch + 1, 0
    idx = self._order(self.epoch)[self.cursor:self.cursor + self.batch_size]
    self.cursor += self.batch_size
    return idx

  def state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

  def restore(self, s: Mapping[str, int]) -> None:
    if int(s["n"]) != self.n or int(s["seed"]) != self.seed:
      raise ValueError(f"iterator state {dict(s)} belongs to different data (n={self.n}, "
                       f"seed={self.seed})")
    self.epoch, self.cursor = int(s["epoch"]), int(s["cursor"])
