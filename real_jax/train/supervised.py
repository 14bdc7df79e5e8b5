"""The supervised stages: warm-up SFT ("sft"), TRACT's CoT-RAFT ("tract"), RAFT ("raft") and
pretraining ("lm"), one loop over resumable `LMBatch` sources.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from real_jax import readout
from real_jax import sharding as shd
from real_jax.judge import scores as scores_lib
from real_jax.train import data_utils, packing, state as state_lib, steps as steps_lib
from real_jax.train.batch import LMBatch
from real_jax.train.metrics import Progress, fmt_metrics
from real_jax.train.runner import Run

__all__ = ["lm_batch", "raft_batch", "RecordBatches", "objective_for", "pack_spec",
    "run_supervised"]


# ---------------------------------------------------------------------------------------------
# Step batches from judge records


def lm_batch(b: Mapping[str, np.ndarray], kind: str, target_ids: np.ndarray,
             score_tokens=None) -> LMBatch:
  """Teacher-forced batch from a JudgeBatcher batch with targets (prompt ⊕ completion).

  kind "sft": cross-entropy on every completion token (feedback, delimiter, score, EOS).
  kind "tract": cross-entropy on the CoT (feedback + delimiter; not the score's tokens, not
  EOS) and the squared error of y_hat read at the last delimiter token.
  `score_tokens`: the scale's, where a score may be several tokens (`score_lengths`); else
  every score is one token.
  """
  pt, pm = b["prompt_tokens"], b["prompt_mask"]
  ct, cm = b["completion_tokens"], b["completion_mask"]
  lp = pt.shape[1]
  n_c = cm.sum(axis=1)
  n_s = (score_lengths(b, score_tokens) if score_tokens is not None and score_tokens.multi_token
         else np.ones_like(n_c))
  tokens = np.concatenate([pt, ct], axis=1).astype(np.int32)
  mask = np.concatenate([pm, cm], axis=1).astype(bool)
  cols = np.arange(ct.shape[1])[None, :]
  if kind == "sft":
    resp = cm.astype(np.float32)
  elif kind == "tract":
    resp = (cols < (n_c - n_s - 1)[:, None]).astype(np.float32)  # drop the score and EOS
  else:
    raise ValueError(kind)
  loss_mask = np.concatenate([np.zeros(pt.shape, np.float32), resp], axis=1)
  score_pos = np.maximum(lp + n_c - n_s - 2, 0).astype(np.int32)  # the last delimiter token
  return LMBatch(tokens=tokens, mask=mask, loss_mask=loss_mask, score_pos=score_pos,
                 target=b["target"].astype(np.float32), target_id=target_ids.astype(np.int32),
                 sample_mask=b["valid"].astype(np.float32))


def score_lengths(b: Mapping[str, np.ndarray], score_tokens) -> np.ndarray:
  """[B] the tokens of the score each completion writes after its delimiter (parsed from the
  completion; 1 where none parses)."""
  lens = [scores_lib.parse_generation(t, score_tokens, length=int(m.sum())).score_len
          for t, m in zip(b["completion_tokens"], b["completion_mask"])]
  return np.maximum(np.asarray(lens, np.int32), 1)


def raft_batch(b: Mapping[str, np.ndarray], delim: Sequence[int], target_ids: np.ndarray
               ) -> LMBatch:
  """prompt ⊕ delimiter (no CoT); y_hat is read at the last delimiter token."""
  seqs = readout.append_delimiter(b["prompt_tokens"], b["prompt_mask"], delim)
  return LMBatch(tokens=seqs.tokens, mask=seqs.mask,
                 loss_mask=np.zeros(seqs.tokens.shape, np.float32),
                 score_pos=seqs.score_pos, target=b["target"].astype(np.float32),
                 target_id=target_ids.astype(np.int32), sample_mask=b["valid"].astype(np.float32))


class RecordBatches:
  """Step batches from the judge records (sft / tract on demonstrations / raft); resumable."""

  def __init__(self, run: Run, kind: str, batch_size: int, seed: int, shuffle: bool):
    self.kind, self.vocab = kind, run.vocab
    self.batcher = data_utils.make_batcher(
        run.config, run.sources.train, run.vocab.tokenizer, run.vocab.score_tokens,
        batch_size=batch_size, with_targets=kind != "raft", shuffle=shuffle, seed=seed)

  def __next__(self) -> LMBatch:
    b = next(self.batcher)
    st = self.vocab.score_tokens
    # The score token of each target (its index on scales of several-token scores).
    tid = readout.target_token_ids(b["target"], st)
    if self.kind == "raft":
      return raft_batch(b, self.vocab.delim_start, tid)
    return lm_batch(b, self.kind, tid, st)

  def skipped_rows(self) -> int:
    return self.batcher.skipped_rows()

  def state(self):
    return self.batcher.state()

  def restore(self, s):
    self.batcher.restore(s)


def objective_for(kind: str, c, score_tokens) -> steps_lib.Loss:
  """The loss of a supervised stage kind (`methods.Stage.loss`) under config `c`."""
  if kind in ("sft", "lm"):
    return steps_lib.sft_objective()
  if kind == "raft":
    return steps_lib.raft_objective(score_tokens, renormalize=c.raft.renormalize)
  if kind == "tract":
    return steps_lib.cot_raft_objective(score_tokens, lam=c.tract.lam,
                                        renormalize=c.raft.renormalize)
  raise ValueError(f"unknown supervised stage kind {kind!r}")


def pack_spec(c, mesh, num_micro: int) -> packing.PackSpec | None:
  """The packing of config `c` (None: `data.pack` off). Packed rows divide like the padded
  batch's: by the mesh's data x fsdp size times the micro-batches per step."""
  if not c.data.pack:
    return None
  return packing.PackSpec(width=int(c.data.pack_length),
                          row_multiple=shd.batch_split(mesh) * num_micro,
                          max_segments=int(c.data.pack_max_segments))


# ---------------------------------------------------------------------------------------------
# The loop


def run_supervised(run: Run, stage: str, params_in, *, kind: str, steps: int, batch_size: int,
                   micro_batch_size: int, lr: float, schedule: str = "", main: bool = False,
                   copy_params: bool = False, lr_warmup: int = -1,
                   make_source: Callable[[int], Any] | None = None):
  """`steps` optimiser steps of the supervised loss `kind`. Batches come from
  `make_source(seed)` (a resumable iterator of `LMBatch`; default: the training records,
  `RecordBatches`), built only when the stage has steps left. Returns the final parameters."""
  c = run.config
  tx = state_lib.optimizer_from_config(c.optim, lr=lr, steps=steps, schedule=schedule,
                                       warmup_steps=lr_warmup)
  opened = run.runner.open(stage, params_in, tx, total=steps, main=main, copy_params=copy_params)
  if opened.finished:
    return opened.close()
  seed = data_utils.data_order_seed(c.seed, stage)
  num_micro = batch_size // micro_batch_size if micro_batch_size else 1
  source = (make_source(seed) if make_source is not None else
            RecordBatches(run, kind, batch_size, seed, shuffle=c.train.shuffle))
  # Judge records are packed (`data.pack`); pretraining's documents fill their rows already.
  pack = pack_spec(c, run.mesh, num_micro) if kind != "lm" else None
  opened.restore_data(source)
  loss = objective_for(kind, c, run.vocab.score_tokens)
  step_fn = None
  with Progress(stage, steps, start=opened.start, every=c.log.every) as prog:
    schedule_fn = state_lib.make_schedule(lr or c.optim.lr, steps, schedule or c.optim.schedule,
                                          c.optim.warmup_steps if lr_warmup < 0 else lr_warmup)
    t_last, n_tok, n_slots = time.time(), 0.0, 0
    for step in range(opened.start, steps):
      batch = next(source)
      if pack is not None:
        batch, _ = packing.pack_lm_batch(batch, pack)
      if step_fn is None:
        step_fn = steps_lib.make_train_step(loss, run.graphdef, tx, run.mesh, opened.shardings,
                                            batch, num_micro=num_micro,
                                            nan_update_at=steps_lib.nan_updates(c.debug))
      n_tok += float(batch.mask.sum())
      n_slots += batch.mask.size
      opened.state, m = step_fn(opened.state, shd.put_batch(batch, run.mesh))
      done = step + 1
      if done % c.log.every == 0 or done == steps or done == opened.start + 1:
        m = {k: float(v) for k, v in shd.to_host(m).items()}
        dt = time.time() - t_last
        # fill: real tokens / token slots (rows x width) since the last log line.
        m.update(lr=float(schedule_fn(step)), tokens_per_s=n_tok / max(dt, 1e-9),
                 rows=float(batch.tokens.shape[0]), fill=n_tok / max(n_slots, 1))
        if hasattr(source, "skipped_rows"):
          m["rows_skipped"] = float(source.skipped_rows())
        t_last, n_tok, n_slots = time.time(), 0.0, 0
        run.writer.write(stage, done, m)
        prog.update(done, fmt_metrics(m, ("loss", "ce", "mse", "grad_norm", "skipped",
                                          "rows_skipped")), force=True)
      opened.end_step(done, data=source.state(), applied=m["applied"])
  return opened.close()
