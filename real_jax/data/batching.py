"""Batching of judge records: chat tokenisation, left-padded length buckets, seeded shuffling,
a resumable position, and placement of host-local batches on a device mesh.

  batcher = JudgeBatcher(source, tokenizer, BatchConfig(batch_size=64, buckets=(128, 256)))
  for batch in batcher:                       # dict of numpy arrays (this process's rows)
    arrays = to_global(batch, mesh)           # jax.Arrays sharded over ("data", "fsdp")
    ...
    ckpt_extra = batcher.state()              # small JSON-able dict; later: batcher.restore(it)

`real_jax.train` uses the other mode: process_index=0, process_count=1 on every host, so each
host holds the whole global batch (the RL bookkeeping needs every group) and places it with
`sharding.put_global`.

Batch arrays (b = batch_size // process_count rows for this process; L a bucket length):

  prompt_tokens     int32 [b, Lp]  chat-rendered prompt, LEFT-padded with the pad id
  prompt_mask       int32 [b, Lp]  1 on prompt tokens, 0 on padding
  prompt_positions  int32 [b, Lp]  cumsum(mask) - 1, clipped at 0 (RoPE positions)
  target            float32 [b]    ground truth (record["target"])
  target_int        int32 [b]      record["target_int"] (-1 when not integral)
  index             int32 [b]      index of the record in the source (-1 on padding rows)
  valid             int32 [b]      1 for real rows, 0 for padding rows (last batch when
                                   drop_remainder=False)
  with with_targets=True (SFT), also:
  completion_tokens int32 [b, Lc]  feedback + delimiter + score + EOS, RIGHT-padded
  completion_mask   int32 [b, Lc]  1 on completion tokens (EOS included), 0 on padding

`sft_sequences(batch)` joins prompt and completion into teacher-forcing sequences with a loss
mask on the completion tokens.

Lp is the smallest bucket that holds the longest prompt of the *global* batch, so every process
gets the same shapes and jit sees at most len(buckets) prompt shapes. A prompt longer than
`max_prompt_len` (default: the largest bucket) is skipped and counted under "prompt_too_long"
(`overlong="skip"`), left-truncated to its last `max_prompt_len` tokens and counted under
"prompt_truncated" (`overlong="truncate"`, the authors' `truncation='left'`), or raises
(`overlong="error"`). For SFT, records without a usable target
are skipped under "no_sft_target" and over-long targets under "completion_too_long".

Order: epoch e visits the records in `np.random.default_rng([seed, e]).permutation(n)` (or in
order with shuffle=False). The position is (epoch, cursor into that order); `state()` and
`restore()` save and set it, and because skips are deterministic the batches after a restore
are exactly those that would have followed. Every process walks the same global order and
keeps its contiguous slice of each global batch.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from real_jax.judge import prompts as prompts_lib
from real_jax.judge.scales import ScoreScale, as_scale
from real_jax.layout import (bucket_length, left_pad, positions_from_mask, power_of_two_buckets,
                             right_pad)

__all__ = ["STATE_VERSION", "OVERLONG", "BatchConfig", "CHARS_PER_TOKEN", "PromptTooLongError",
    "TooFewRowsError", "sft_score", "JudgeBatcher", "sft_sequences", "to_global"]

STATE_VERSION = 1
OVERLONG = ("skip", "truncate", "error")  # what a prompt longer than max_prompt_len gets


@dataclasses.dataclass(frozen=True)
class BatchConfig:
  """Batching options. `batch_size` is the GLOBAL batch size (all processes together)."""

  batch_size: int
  buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
  max_prompt_len: int | None = None
  overlong: str = "skip"
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  drop_remainder: bool = True
  enable_thinking: bool | None = None  # None: not passed to the chat template
  with_targets: bool = False
  output_format: str = prompts_lib.OutputFormat.SCORE_PHRASE.value
  completion_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024)
  max_completion_len: int | None = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError("batch_size must be >= 1")
    if not self.buckets or list(self.buckets) != sorted(set(self.buckets)):
      raise ValueError(f"buckets must be increasing and non-empty, got {self.buckets}")
    if self.overlong not in OVERLONG:
      raise ValueError(f"overlong must be 'skip', 'truncate' or 'error', got {self.overlong!r}")
    if self.max_prompt_len is not None and self.max_prompt_len > self.buckets[-1]:
      raise ValueError(f"max_prompt_len {self.max_prompt_len} exceeds the largest bucket "
                       f"{self.buckets[-1]}")

  @property
  def prompt_limit(self) -> int:
    return self.max_prompt_len if self.max_prompt_len is not None else self.buckets[-1]

  @property
  def completion_limit(self) -> int:
    return (self.max_completion_len if self.max_completion_len is not None
            else self.completion_buckets[-1])


# A prompt of more than this many characters per token of max_prompt_len is rejected (counted as
# "prompt_far_too_long") before it is tokenised, so a runaway row (a 50 MB line) is not tokenised
# on every pass. Natural text runs at 3-5 characters per token; only text with very long
# repeated runs (whitespace, a repeated character) could fit at more than 16, and is rejected.
CHARS_PER_TOKEN = 16


class PromptTooLongError(ValueError):
  pass


class TooFewRowsError(ValueError):
  """A whole epoch of the source gave fewer usable rows than one batch: iterating would never
  yield (or would loop forever skipping everything)."""


def sft_score(record: Mapping[str, Any], scale: ScoreScale | str | None = None) -> int | None:
  """The score an SFT target ends with: the demonstration's own score, else the integer label
  (each only if it is a score of `scale`, default 1-5)."""
  scale = as_scale(scale)
  fs = int(record.get("feedback_score", -1))
  if fs >= 0 and scale.contains(fs) and record.get("feedback"):
    return fs
  ti = int(record.get("target_int", -1))
  return ti if ti >= 0 and scale.contains(ti) else None


class JudgeBatcher:
  """Deterministic, resumable iterator of padded judge batches (see the module docstring)."""

  def __init__(self, source: Sequence[Mapping[str, Any]], tokenizer, config: BatchConfig, *,
               process_index: int | None = None, process_count: int | None = None,
               score_tokens=None):
    if process_index is None or process_count is None:
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if config.batch_size % process_count:
      raise ValueError(f"global batch_size {config.batch_size} is not divisible by the "
                       f"{process_count} processes")
    if len(source) == 0:
      raise ValueError("empty source")
    self.source = source
    self.tokenizer = tokenizer
    self.config = config
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.score_tokens = score_tokens
    pad = getattr(tokenizer, "pad_token_id", None)
    self.pad_id = int(pad if pad is not None else prompts_lib.eos_token_id(tokenizer))
    self.eos_id = prompts_lib.eos_token_id(tokenizer)
    self.stats: collections.Counter = collections.Counter()
    self._epoch = 0
    self._cursor = 0
    self._order_epoch = -1
    self._order: np.ndarray | None = None
    self._epoch_usable: int | None = 0  # usable rows seen this epoch (None: resumed mid-epoch)

  # --- position ------------------------------------------------------------------------------
  def state(self) -> dict[str, Any]:
    """The position as a small JSON-able dict (store it with the checkpoint)."""
    return {"version": STATE_VERSION, "epoch": int(self._epoch), "cursor": int(self._cursor),
            "seed": int(self.config.seed), "num_records": len(self.source),
            "batch_size": int(self.config.batch_size),
            "skipped": {k: int(v) for k, v in sorted(self.stats.items())}}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a `state()`; raises if it belongs to a different data order."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"unknown batcher state version {state.get('version')}")
    for key, mine in (("seed", self.config.seed), ("num_records", len(self.source))):
      if int(state[key]) != int(mine):
        raise ValueError(f"batcher state has {key}={state[key]} but this batcher has {mine}; "
                         "it belongs to a different data order")
    self._epoch = int(state["epoch"])
    self._cursor = int(state["cursor"])
    self._epoch_usable = 0 if self._cursor == 0 else None
    self.stats = collections.Counter({k: int(v) for k, v in state.get("skipped", {}).items()})

  def skipped_rows(self) -> int:
    """Records skipped so far (every reason but left-truncation and an epoch's dropped
    remainder), cumulative over epochs and resumes."""
    return int(sum(v for k, v in self.stats.items()
                   if k not in ("prompt_truncated", "dropped_remainder")))

  def _order_for(self, epoch: int) -> np.ndarray:
    if self._order_epoch != epoch:
      n = len(self.source)
      self._order = (np.random.default_rng([self.config.seed, epoch]).permutation(n)
                     if self.config.shuffle else np.arange(n))
      self._order_epoch = epoch
    return self._order

  # --- records -------------------------------------------------------------------------------
  def _encode(self, index: int):
    """(prompt ids, completion ids or None) for a record, or None if it is skipped."""
    rec = self.source[index]
    cfg = self.config
    text = rec["prompt"]
    if len(text) > CHARS_PER_TOKEN * cfg.prompt_limit:  # far too long: never tokenised
      if cfg.overlong == "error":
        raise PromptTooLongError(f"record {index} ({rec.get('id', '?')}): prompt has {len(text)} "
                                 f"characters > {CHARS_PER_TOKEN} x max_prompt_len "
                                 f"{cfg.prompt_limit}")
      if cfg.overlong == "skip":
        self.stats["prompt_far_too_long"] += 1
        return None
      text = text[len(text) - CHARS_PER_TOKEN * cfg.prompt_limit:]  # truncate keeps the end
    ids = prompts_lib.render_chat(self.tokenizer, text, enable_thinking=cfg.enable_thinking)
    if len(ids) > cfg.prompt_limit:
      if cfg.overlong == "error":
        raise PromptTooLongError(f"record {index} ({rec.get('id', '?')}): prompt has {len(ids)} "
                                 f"tokens > max_prompt_len {cfg.prompt_limit}")
      if cfg.overlong == "truncate":  # the authors' truncation='left': the start is lost
        self.stats["prompt_truncated"] += 1
        ids = ids[len(ids) - cfg.prompt_limit:]
      else:
        self.stats["prompt_too_long"] += 1
        return None
    completion = None
    if cfg.with_targets:
      score = sft_score(rec, None if self.score_tokens is None else self.score_tokens.scale)
      if score is None:
        self.stats["no_sft_target"] += 1
        return None
      completion = prompts_lib.build_target_ids(self.tokenizer, rec.get("feedback", ""), score,
                                                cfg.output_format, score_tokens=self.score_tokens,
                                                eos_id=self.eos_id)
      if len(completion) > cfg.completion_limit:
        self.stats["completion_too_long"] += 1
        return None
    return rec, ids, completion

  def _next_global_rows(self):
    """The next global batch of encoded rows (fewer only at the end with drop_remainder=False)."""
    cfg = self.config
    rows = []
    while len(rows) < cfg.batch_size:
      if cfg.num_epochs is not None and self._epoch >= cfg.num_epochs:
        break
      order = self._order_for(self._epoch)
      if self._cursor >= len(order):
        self._check_epoch_yield()
        if rows and not cfg.drop_remainder:
          break  # emit the partial batch; the next call starts the next epoch
        if rows and cfg.drop_remainder:
          self.stats["dropped_remainder"] += len(rows)
          rows = []
        self._epoch += 1
        self._cursor = 0
        continue
      index = int(order[self._cursor])
      self._cursor += 1
      enc = self._encode(index)
      if enc is not None:
        rows.append((index, *enc))
        if self._epoch_usable is not None:
          self._epoch_usable += 1
    if self._cursor >= len(self._order_for(self._epoch)) and not cfg.drop_remainder and rows:
      self._epoch += 1
      self._cursor = 0
      self._epoch_usable = 0
    return rows

  def _check_epoch_yield(self) -> None:
    """At the end of an epoch: raise if the whole epoch could not fill one batch."""
    usable, cfg = self._epoch_usable, self.config
    self._epoch_usable = 0
    need = cfg.batch_size if cfg.drop_remainder else 1
    if usable is None or usable >= need:
      return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items())
                        if k != "dropped_remainder") or "none"
    raise TooFewRowsError(
        f"{usable} of {len(self.source)} records are usable (skipped: {skipped}), fewer than one "
        f"batch of {cfg.batch_size}: lower the batch size, or raise data.max_prompt_len / "
        f"data.max_target_len (or set data.overlong=truncate) if prompts or targets are skipped")

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self._next_global_rows()
    if not rows:
      raise StopIteration
    return self._make_batch(rows)

  def _make_batch(self, rows) -> dict[str, np.ndarray]:
    cfg = self.config
    B = cfg.batch_size
    n_real = len(rows)
    Lp = bucket_length(max(len(r[2]) for r in rows), cfg.buckets)
    b = B // self.process_count
    lo, hi = self.process_index * b, (self.process_index + 1) * b
    mine = [rows[i] if i < n_real else None for i in range(lo, hi)]
    prompts = [r[2] if r is not None else [] for r in mine]
    tokens, mask = left_pad(prompts, Lp, self.pad_id)
    batch = {
        "prompt_tokens": tokens,
        "prompt_mask": mask,
        "prompt_positions": positions_from_mask(mask),
        "target": np.array([r[1]["target"] if r else 0.0 for r in mine], np.float32),
        "target_int": np.array([r[1]["target_int"] if r else -1 for r in mine], np.int32),
        "index": np.array([r[0] if r else -1 for r in mine], np.int32),
        "valid": np.array([1 if r else 0 for r in mine], np.int32),
    }
    if cfg.with_targets:
      Lc = bucket_length(max(len(r[3]) for r in rows), cfg.completion_buckets)
      ctoks, cmask = right_pad([r[3] if r else [] for r in mine], Lc, self.pad_id)
      batch["completion_tokens"] = ctoks
      batch["completion_mask"] = cmask
    return batch


def sft_sequences(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Joins a `with_targets` batch into teacher-forcing sequences [b, Lp + Lc].

  Returns tokens, mask (1 on real tokens), positions (cumsum(mask) - 1, clipped at 0) and
  loss_mask: 1 where tokens[:, t] is a completion token (feedback, delimiter, score, EOS). The
  loss on token t is -log p(tokens[t] | tokens[:t]), read from the logits at t - 1, so the
  prompt's last token (the assistant header) is never a loss target and the EOS always is.
  """
  tokens = np.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], axis=1)
  mask = np.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1)
  loss_mask = np.concatenate([np.zeros_like(batch["prompt_mask"]), batch["completion_mask"]], axis=1)
  return {"tokens": tokens, "mask": mask, "positions": positions_from_mask(mask),
          "loss_mask": loss_mask}


def to_global(batch: Mapping[str, np.ndarray], mesh, batch_axes: Sequence[str] = ("data", "fsdp")
              ) -> dict[str, Any]:
  """Places this process's rows of every array on `mesh`, batch dim split over `batch_axes`.

  Uses `jax.make_array_from_process_local_data`; the global batch is the concatenation of the
  processes' local batches. Axes of `batch_axes` missing from the mesh are ignored. Raises a
  ValueError when the global batch size does not divide by the product of those axes' sizes.
  """
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"none of batch_axes {tuple(batch_axes)} is a mesh axis {mesh.axis_names}")
  n_shards = math.prod(mesh.shape[a] for a in axes)
  sharding_cache = {}
  out = {}
  for key, x in batch.items():
    local = np.asarray(x)
    if local.ndim == 0:
      raise ValueError(f"batch[{key!r}] is a scalar; every batch entry needs a batch dimension")
    global_rows = local.shape[0] * jax.process_count()
    if global_rows % n_shards:
      sizes = {a: mesh.shape[a] for a in axes}
      raise ValueError(f"batch[{key!r}] has global batch size {global_rows}, which does not divide "
                       f"into the {n_shards} shards of mesh axes {sizes}; choose a batch size that "
                       f"is a multiple of {n_shards}")
    spec = P(axes if len(axes) > 1 else axes[0], *([None] * (local.ndim - 1)))
    sharding = sharding_cache.setdefault(local.ndim, NamedSharding(mesh, spec))
    out[key] = jax.make_array_from_process_local_data(sharding, local,
                                                      (global_rows,) + local.shape[1:])
  return out
