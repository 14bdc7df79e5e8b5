"""method=pretrain: the synthetic task's base model. Next-token training on its packed corpus
(`CorpusBatches`), then greedy next-word probes of the facts the judge task relies on."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from real_jax import layout
from real_jax import sharding as shd
from real_jax.data import synthetic as synthetic_lib, synthetic_corpus
from real_jax.train import data_utils, steps as steps_lib
from real_jax.train.batch import LMBatch
from real_jax.train.runner import Run
from real_jax.train.supervised import run_supervised

__all__ = ["CorpusBatches", "ReplayBatches", "probe_accuracy", "run_pretrain"]


class CorpusBatches:
  """Pretraining batches: packed documents of the synthetic corpus, next-token CE on every real
  token (`synthetic_corpus.packed_rows`; deterministic in (seed, step), so the state is a step)."""

  def __init__(self, run: Run, batch_size: int, seq_len: int, seed: int):
    self.tokenizer, self.eos_id = run.vocab.tokenizer, run.vocab.score_tokens.eos_id
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    self.task = synthetic_lib.SyntheticConfig(**{k: run.config.data.synthetic[k]
                                                 for k in data_utils.SYNTHETIC_OPTIONS})
    self.step = 0

  def __next__(self) -> LMBatch:
    tokens = synthetic_corpus.packed_rows(
        self.tokenizer, self.task, seed=self.seed, step=self.step, rows=self.batch_size,
        length=self.seq_len, eos_id=self.eos_id)
    self.step += 1
    b = len(tokens)
    loss_mask = np.ones(tokens.shape, np.float32)
    loss_mask[:, 0] = 0.0  # the first token has no context
    return LMBatch(tokens=tokens, mask=np.ones(tokens.shape, bool), loss_mask=loss_mask,
                   score_pos=np.zeros(b, np.int32), target=np.zeros(b, np.float32),
                   target_id=np.zeros(b, np.int32), sample_mask=np.ones(b, np.float32))

  def state(self):
    return {"step": self.step}

  def restore(self, s):
    self.step = int(s["step"])


class ReplayBatches:
  """A stage's batches with every `every`-th one from the pretraining corpus (`warmup.
  replay_every`): judge demonstrations interleaved with the base's own data. Resumable."""

  def __init__(self, judge, corpus: CorpusBatches, every: int):
    self.judge, self.corpus, self.every, self.n = judge, corpus, int(every), 0

  def __next__(self) -> LMBatch:
    self.n += 1
    return next(self.corpus) if self.n % self.every == 0 else next(self.judge)

  def skipped_rows(self) -> int:
    return self.judge.skipped_rows()

  def state(self):
    return {"judge": self.judge.state(), "corpus": self.corpus.state(), "n": self.n}

  def restore(self, s):
    self.judge.restore(s["judge"])
    self.corpus.restore(s["corpus"])
    self.n = int(s["n"])


def probe_accuracy(graphdef, params, probes: dict[str, list[tuple[str, str]]], *, tokenizer,
                   pad_id: int, mesh, batch_size: int = 64) -> dict[str, float]:
  """Greedy next-word accuracy per probe kind (`synthetic_corpus.probes`): the argmax of the
  logits after each left-padded prefix against the expected word's token."""
  fwd = jax.jit(lambda p, b: jnp.argmax(
      steps_lib.forward(graphdef, p, b["tokens"], b["mask"], b["score_pos"])[1], -1))
  out = {}
  for kind, rows in probes.items():
    hits = 0
    for i in range(0, len(rows), batch_size):
      chunk = rows[i:i + batch_size]
      enc = tokenizer([p for p, _ in chunk], add_special_tokens=False)["input_ids"]
      want = np.asarray([tokenizer.convert_tokens_to_ids(w) for _, w in chunk])
      enc += [enc[0]] * (batch_size - len(chunk))  # one compiled shape
      width = max(map(len, enc))
      tok, mask = layout.left_pad(enc, width, pad_id)
      batch = {"tokens": tok.astype(np.int32), "mask": mask.astype(bool),
               "score_pos": np.full(batch_size, width - 1, np.int32)}
      pred = np.asarray(shd.to_host(fwd(params, shd.put_batch(batch, mesh))))
      hits += int((pred[:len(chunk)] == want).sum())
    out[kind] = hits / len(rows)
  return out


def run_pretrain(run: Run, params):
  """Next-token training on the synthetic corpus, then the knowledge probes (written to
  <workdir>/pretrain_probes.json and the metrics). Returns the parameters."""
  c = run.config
  pc = c.pretrain
  source = CorpusBatches(run, pc.batch_size, pc.seq_len, seed=c.seed)
  params = run_supervised(run, "pretrain", params, kind="lm", steps=pc.steps,
                          batch_size=pc.batch_size, micro_batch_size=0, lr=pc.lr,
                          schedule=pc.schedule, lr_warmup=pc.lr_warmup, main=True,
                          make_source=lambda seed: source)
  acc = probe_accuracy(run.graphdef, params, synthetic_corpus.probes(source.task, n=pc.probes),
                       tokenizer=run.vocab.tokenizer, pad_id=run.vocab.pad_id, mesh=run.mesh)
  logging.info("[pretrain] knowledge probes (greedy next-word accuracy): %s",
               {k: round(v, 4) for k, v in acc.items()})
  run.writer.write("pretrain_probes", pc.steps, acc)
  if shd.is_main_process():
    with open(os.path.join(run.workdir, synthetic_corpus.PROBES_FILE), "w") as f:
      json.dump({"step": pc.steps, "accuracy": acc, "n_per_kind": pc.probes}, f, indent=2)
  return params
