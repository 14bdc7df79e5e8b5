"""The training stages: supervised (warm-up SFT, RAFT, TRACT stages), TRACT's self-CoT
generation, and the RL loop (REAL and standard RL). Each stage checkpoints on its own and
resumes exactly from its last checkpoint (params, optimizer state, step, RNG, data position).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from real_jax import objectives as obj
from real_jax import sharding as shd
from real_jax.data import batching, synthetic as synthetic_lib, synthetic_corpus
from real_jax.train import checkpoint as ckpt_lib
from real_jax.train import config_lib, data_utils, rollout, state as state_lib, steps as steps_lib
from real_jax.train.metrics import Progress, fmt_metrics


class SimulatedKill(RuntimeError):
  """Raised by `config.debug.stop_after` (tests of exact resume)."""


@dataclasses.dataclass
class Context:
  """Everything a stage needs besides its parameters."""
  config: Any
  workdir: str
  mesh: Any
  tokenizer: Any
  tokenizer_dir: str
  score_tokens: Any
  pad_id: int
  graphdef: Any
  model_cfg: Any
  writer: Any
  train_source: Any
  eval_sources: dict
  delim_start: tuple
  val_source: Any = None  # data.val_size training records held out for checkpoint selection
  # evaluate(params, *, name, tag, periodic, validation, ...) -> summary
  evaluate: Callable[..., dict] | None = None
  score_fns: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Batch providers for supervised stages (each resumable)


class RecordBatches:
  """Step batches from the judge records (sft / tract on demonstrations / raft)."""

  def __init__(self, ctx: Context, kind: str, batch_size: int, seed: int, shuffle: bool):
    self.ctx, self.kind = ctx, kind
    self.batcher = data_utils.make_batcher(
        ctx.config, ctx.train_source, ctx.tokenizer, ctx.score_tokens, batch_size=batch_size,
        with_targets=kind != "raft", shuffle=shuffle, seed=seed)

  def __next__(self) -> dict[str, np.ndarray]:
    b = next(self.batcher)
    tid = rollout.target_token_ids(b["target"], self.ctx.score_tokens)
    if self.kind == "raft":
      return data_utils.raft_batch(b, self.ctx.delim_start, tid)
    return data_utils.lm_batch(b, self.kind, tid)

  def state(self):
    return self.batcher.state()

  def restore(self, s):
    self.batcher.restore(s)


class SelfCotBatches:
  """TRACT stage 2: prompt ⊕ self-generated CoT, CE on the CoT + squared error of y_hat."""

  def __init__(self, ctx: Context, data: dict[str, np.ndarray], batch_size: int, seed: int):
    self.ctx, self.data = ctx, data
    n = len(data["target"])
    if n == 0:
      raise ValueError("TRACT stage 2 has no usable self-generated CoTs (none reached the "
                       "delimiter); train stage 1 longer or raise rl.max_response_len")
    # Few usable self-CoTs (e.g. a short smoke run): batches cannot be larger than the data.
    self.it = data_utils.ArrayIterator(n, min(batch_size, n), seed=seed)
    self.buckets = data_utils.buckets(ctx.config, int(ctx.config.data.max_prompt_len))

  def __next__(self):
    idx = next(self.it)
    d, pad = self.data, self.ctx.pad_id
    prompts = [d["prompt_flat"][d["prompt_off"][i]:d["prompt_off"][i + 1]] for i in idx]
    resps = [d["resp_flat"][d["resp_off"][i]:d["resp_off"][i + 1]] for i in idx]
    lp = batching.bucket_length(max(len(p) for p in prompts), self.buckets)
    pt, pm = batching.left_pad(prompts, lp, pad)
    rl = max(len(r) for r in resps)
    rt, _ = batching.right_pad(resps, rl, pad)
    length = np.array([len(r) for r in resps], np.int32)
    seqs = rollout.build_sequences(pt, pm, rt, length, pad_id=pad, extra=0)
    target = d["target"][idx].astype(np.float32)
    return {"tokens": seqs["tokens"], "mask": seqs["mask"], "loss_mask": seqs["cot_mask"],
            "score_pos": seqs["score_pos"], "target": target,
            "target_id": rollout.target_token_ids(target, self.ctx.score_tokens),
            "sample_mask": np.ones(len(idx), np.float32)}

  def state(self):
    return self.it.state()

  def restore(self, s):
    self.it.restore(s)


class CorpusBatches:
  """Pretraining batches: packed documents of the synthetic corpus, next-token CE on every real
  token (`synthetic_corpus.packed_rows`; deterministic in (seed, step), so the state is a step)."""

  def __init__(self, ctx: Context, batch_size: int, seq_len: int, seed: int):
    self.ctx, self.batch_size, self.seq_len, self.seed = ctx, batch_size, seq_len, seed
    self.task = synthetic_lib.SyntheticConfig(**{k: ctx.config.data.synthetic[k]
                                           for k in data_utils.SYNTHETIC_OPTIONS})
    self.step = 0

  def __next__(self) -> dict[str, np.ndarray]:
    tokens = synthetic_corpus.packed_rows(
        self.ctx.tokenizer, self.task, seed=self.seed, step=self.step, rows=self.batch_size,
        length=self.seq_len, eos_id=self.ctx.score_tokens.eos_id)
    self.step += 1
    b = len(tokens)
    loss_mask = np.ones(tokens.shape, np.float32)
    loss_mask[:, 0] = 0.0  # the first token has no context
    return {"tokens": tokens, "mask": np.ones(tokens.shape, bool), "loss_mask": loss_mask,
            "score_pos": np.zeros(b, np.int32), "target": np.zeros(b, np.float32),
            "target_id": np.zeros(b, np.int32), "sample_mask": np.ones(b, np.float32)}

  def state(self):
    return {"step": self.step}

  def restore(self, s):
    self.step = int(s["step"])


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
      tok, mask = batching.left_pad(enc, width, pad_id)
      batch = {"tokens": tok.astype(np.int32), "mask": mask.astype(bool),
               "score_pos": np.full(batch_size, width - 1, np.int32)}
      pred = np.asarray(shd.to_host(fwd(params, steps_lib.put_batch(batch, mesh))))
      hits += int((pred[:len(chunk)] == want).sum())
    out[kind] = hits / len(rows)
  return out


def run_pretrain(ctx: Context, params):
  """method=pretrain: next-token training on the synthetic corpus, then the knowledge probes
  (written to <workdir>/pretrain_probes.json and the metrics). Returns the parameters."""
  c = ctx.config
  pc = c.pretrain
  source = CorpusBatches(ctx, pc.batch_size, pc.seq_len, seed=c.seed)
  params = run_supervised(ctx, "pretrain", params, kind="lm", steps=pc.steps,
                          batch_size=pc.batch_size, micro_batch_size=0, lr=pc.lr,
                          schedule=pc.schedule, lr_warmup=pc.lr_warmup, main=True, source=source)
  acc = probe_accuracy(ctx.graphdef, params, synthetic_corpus.probes(source.task, n=pc.probes),
                       tokenizer=ctx.tokenizer, pad_id=ctx.pad_id, mesh=ctx.mesh)
  logging.info("[pretrain] knowledge probes (greedy next-word accuracy): %s",
               {k: round(v, 4) for k, v in acc.items()})
  ctx.writer.write("pretrain_probes", pc.steps, acc)
  if shd.is_main_process():
    with open(os.path.join(ctx.workdir, synthetic_corpus.PROBES_FILE), "w") as f:
      json.dump({"step": pc.steps, "accuracy": acc, "n_per_kind": pc.probes}, f, indent=2)
  return params


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _abstract_state(params, tx):
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
  return {"params": jax.tree.map(lambda x: sds(x.shape, x.dtype), params),
          "opt_state": jax.eval_shape(tx.init, params),
          "step": sds((), jnp.int32), "rng": sds((2,), jnp.uint32), "skipped": sds((), jnp.int32)}


def _copy(tree):
  return jax.tree.map(lambda x: x.copy(), tree)


def _start_stage(ctx: Context, stage: str, params_in, tx, *, copy_params: bool):
  """(checkpointer, state, shardings, start step, meta) — restored if the stage has a checkpoint."""
  c = ctx.config
  ck = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(ctx.workdir, stage),
                             max_to_keep=c.checkpoint.max_to_keep,
                             async_save=c.checkpoint.async_save)
  shardings = state_lib.state_shardings(params_in, tx, ctx.mesh)
  latest = ck.latest_step()
  if latest is not None:
    state, meta = ck.restore(latest, _abstract_state(params_in, tx), shardings)
    logging.info("[%s] resuming from step %d (%s)", stage, latest, ck.directory)
    ctx.writer.truncate(stage, latest)
    return ck, state, shardings, int(latest), meta
  ctx.writer.drop_stage(stage)
  params = _copy(params_in) if copy_params else params_in
  state, shardings = state_lib.init_state(params, tx, ctx.mesh, c.seed)
  return ck, state, shardings, 0, {}


def _maybe_eval(ctx: Context, stage: str, step: int, total: int, params, best, main: bool):
  """Periodic evaluation (every eval.every steps of the main stage) of the VALIDATION split
  (the test splits when the run has none) and best-checkpoint keeping on it.

  Returns the new best value."""
  c = ctx.config
  if not (main and c.eval.every and step % c.eval.every == 0 and step < total
          and ctx.evaluate is not None):
    return best
  validation = ctx.val_source is not None
  summary = ctx.evaluate(params, name=None, tag=f"{stage}_step{step:06d}", periodic=True,
                         validation=validation)
  prefix = "val" if validation else "avg"
  flat = {f"{prefix}_rail_pearson": summary["avg"]["rail"]["pearson"],
          f"{prefix}_rail_spearman": summary["avg"]["rail"]["spearman"],
          f"{prefix}_rail_kendall": summary["avg"]["rail"]["kendall"],
          f"{prefix}_rail_mse": summary["avg"]["rail"]["mse"],
          f"{prefix}_standard_pearson": summary["avg"]["standard"]["pearson"],
          "invalid_frac": summary["avg"]["invalid_frac"]}
  ctx.writer.write(f"eval_{stage}", step, flat)
  return _keep_best(ctx, stage, step, params, summary, best) if validation else best


def _better(metric: str, value: float, best) -> bool:
  if not np.isfinite(value):
    return False
  if best is None:
    return True
  return value < best["value"] if metric.endswith("mse") else value > best["value"]


def _keep_best(ctx: Context, stage: str, step: int, params, val_summary, best):
  """Keeps `params` as the stage's best checkpoint if its validation metric is the best yet."""
  from real_jax.evaluate import lookup
  split = data_utils.VAL_SPLIT
  metric = ctx.config.eval.best_metric
  if not metric or split not in val_summary["splits"]:
    return best
  value = lookup(val_summary, f"splits/{split}/{metric}")
  if not _better(metric, value, best):
    return best
  best_ck = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(ctx.workdir, stage, best=True),
                                  max_to_keep=1, async_save=False, items=("params", "meta"))
  best_ck.save(step, params=params, meta={"metric": metric, "split": split, "value": value,
                                          "step": step})
  best_ck.close()
  logging.info("[%s] new best validation %s = %.4f at step %d", stage, metric, value, step)
  return {"metric": metric, "split": split, "value": value, "step": step}


def offer_best(ctx: Context, stage: str, params) -> dict | None:
  """The final parameters compete for the best checkpoint too (step = the stage's last), on the
  validation split. Returns the best's metadata (None without a validation split)."""
  if not ctx.config.eval.best_metric or ctx.val_source is None or ctx.evaluate is None:
    return None
  main = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(ctx.workdir, stage), async_save=False)
  step = main.latest_step()
  main.close()
  if step is None:
    return None
  val_summary = ctx.evaluate(params, name=None, tag=f"{stage}_final_val", periodic=True,
                             validation=True)
  best = None
  best_dir = ckpt_lib.stage_dir(ctx.workdir, stage, best=True)
  if shd.agree(os.path.isdir(best_dir)):  # all processes open it, or none
    ck = ckpt_lib.Checkpointer(best_dir, async_save=False, items=("params", "meta"))
    if ck.latest_step() is not None:
      best = ck.restore_meta(ck.latest_step())
    ck.close()
  return _keep_best(ctx, stage, int(step), params, val_summary, best)


def _check_kill(ctx: Context, ck, done_steps: int, main: bool):
  n = ctx.config.debug.stop_after
  if main and n and done_steps >= n:
    ck.close()
    raise SimulatedKill(f"debug.stop_after={n}: stopping after {done_steps} steps")


# ---------------------------------------------------------------------------------------------
# Supervised stages


def run_supervised(ctx: Context, stage: str, params_in, *, kind: str, steps: int,
                   batch_size: int, micro_batch_size: int, lr: float, schedule: str = "",
                   main: bool = False, copy_params: bool = False, lr_warmup: int = -1,
                   selfcot: dict[str, np.ndarray] | None = None, source=None):
  """Warm-up SFT ("sft"), CoT-RAFT ("tract"), RAFT ("raft") or pretraining ("lm", on the batches
  of `source`) for `steps` optimiser steps.

  Returns the final parameters.
  """
  c = ctx.config
  tx = state_lib.optimizer_from_config(c.optim, lr=lr, steps=steps, schedule=schedule,
                                       warmup_steps=lr_warmup)
  ck, state, shardings, start, meta = _start_stage(ctx, stage, params_in, tx,
                                                   copy_params=copy_params)
  if meta.get("done"):
    ck.close()
    return state["params"]
  seed = c.seed * 1000 + sum(map(ord, stage))
  if source is None and selfcot is not None:
    source = SelfCotBatches(ctx, selfcot, batch_size, seed)
  elif source is None:
    source = RecordBatches(ctx, kind, batch_size, seed, shuffle=c.train.shuffle)
  if meta.get("data"):
    source.restore(meta["data"])
  best = meta.get("best")
  st = ctx.score_tokens
  if kind in ("sft", "lm"):
    loss = steps_lib.sft_objective()
  elif kind == "raft":
    loss = steps_lib.raft_objective(st, renormalize=c.raft.renormalize)
  else:
    loss = steps_lib.cot_raft_objective(st, lam=c.tract.lam, renormalize=c.raft.renormalize)
  num_micro = batch_size // micro_batch_size if micro_batch_size else 1
  step_fn = None
  prog = Progress(stage, steps, start=start, every=c.log.every)
  schedule_fn = state_lib.make_schedule(lr or c.optim.lr, steps, schedule or c.optim.schedule,
                                        c.optim.warmup_steps if lr_warmup < 0 else lr_warmup)
  t_last, n_tok = time.time(), 0.0
  for step in range(start, steps):
    batch = next(source)
    if step_fn is None:
      step_fn = steps_lib.make_train_step(loss, ctx.graphdef, tx, ctx.mesh, shardings, batch,
                                          num_micro=num_micro)
    n_tok += float(batch["mask"].sum())
    state, m = step_fn(state, steps_lib.put_batch(batch, ctx.mesh))
    done = step + 1
    if done % c.log.every == 0 or done == steps or done == start + 1:
      m = {k: float(v) for k, v in shd.to_host(m).items()}
      dt = time.time() - t_last
      m.update(lr=float(schedule_fn(step)), tokens_per_s=n_tok / max(dt, 1e-9))
      t_last, n_tok = time.time(), 0.0
      ctx.writer.write(stage, done, m)
      prog.update(done, fmt_metrics(m, ("loss", "ce", "mse", "grad_norm", "skipped")), force=True)
    best = _maybe_eval(ctx, stage, done, steps, state["params"], best, main)
    if done % c.checkpoint.every == 0 or done == steps:
      ck.save(done, state, {"data": source.state(), "done": done == steps, "best": best,
                            "stage": stage})
    _check_kill(ctx, ck, done - start, main)
  ck.close()
  ctx.writer.flush()
  return state["params"]


# ---------------------------------------------------------------------------------------------
# TRACT: one self-generated CoT per training prompt


TRACT_COUNTS = "tract_selfcot_counts.json"


def tract_gen_counts(workdir: str) -> str:
  """One line describing TRACT's self-CoT generation (from <workdir>/tract_selfcot_counts.json)."""
  path = os.path.join(workdir, TRACT_COUNTS)
  if not os.path.exists(path):
    return "no self-CoT counts recorded"
  with open(path) as f:
    c = json.load(f)
  skipped = ", ".join(f"{k} {v}" for k, v in c.get("prompts_skipped", {}).items()) or "none"
  return (f"{c['kept']} kept of {c['generated']} generated from {c['prompts_read']} training "
          f"prompts; not reaching the delimiter: truncated {c['truncated']}, EOS first "
          f"{c['eos_before_delimiter']}; prompts skipped before sampling: {skipped}; "
          f"T={c['temperature']}, top-p {c['top_p']}, repetition penalty "
          f"{c['repetition_penalty']}")


def run_tract_gen(ctx: Context, params) -> dict[str, np.ndarray]:
  """Samples one CoT per training prompt with the stage-1 model; keeps those that reached the
  delimiter (the rest are counted and dropped; prompts the batcher skips, e.g. too long, are
  counted too). Saved to <workdir>/tract_selfcot.npz, counts to tract_selfcot_counts.json."""
  c = ctx.config
  path = os.path.join(ctx.workdir, "tract_selfcot.npz")
  if shd.agree(os.path.exists(path)):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  src = ctx.train_source
  n = len(src) if not c.tract.num_prompts else min(c.tract.num_prompts, len(src))
  records = [src[i] for i in range(n)]
  batch_size = c.eval.batch_size
  batcher = data_utils.make_batcher(c, records, ctx.tokenizer, ctx.score_tokens,
                                    batch_size=batch_size, with_targets=False, shuffle=False,
                                    num_epochs=1, drop_remainder=False)
  settings = rollout.SamplerSettings(max_new_tokens=c.rl.max_response_len,
                                     temperature=c.tract.temperature, top_p=c.tract.top_p,
                                     repetition_penalty=c.tract.repetition_penalty)
  key = jax.random.PRNGKey(c.seed + 7)
  prompts, resps, targets = [], [], []
  counts = {"generated": 0, "kept": 0, "truncated": 0, "eos_before_delimiter": 0}
  prog = Progress("tract_gen", -(-n // batch_size), every=max(1, n // batch_size // 5),
                  unit="batch")
  for i, b in enumerate(batcher):
    g = rollout.sample_cots(ctx.graphdef, params, b["prompt_tokens"], b["prompt_mask"],
                            jax.random.fold_in(key, i), settings, ctx.score_tokens,
                            num_samples=1, mesh=ctx.mesh, pad_id=ctx.pad_id,
                            prompt_buckets=data_utils.buckets(c, int(c.data.max_prompt_len)))
    for r in range(len(b["valid"])):
      if not b["valid"][r]:
        continue
      counts["generated"] += 1
      if not g["found"][r]:
        counts["eos_before_delimiter" if g["eos"][r] else "truncated"] += 1
        continue
      counts["kept"] += 1
      prompts.append(b["prompt_tokens"][r][b["prompt_mask"][r].astype(bool)])
      resps.append(g["response"][r, :g["length"][r]])
      targets.append(b["target"][r])
    prog.update(i + 1)
  counts.update(prompts_read=n, prompts_skipped={k: int(v) for k, v in
                                                 sorted(batcher.stats.items()) if v},
                temperature=c.tract.temperature, top_p=c.tract.top_p,
                repetition_penalty=c.tract.repetition_penalty)
  if not prompts:
    raise RuntimeError(f"TRACT: no self-generated CoT reached the delimiter ({counts}); train "
                       "stage 1 longer or raise rl.max_response_len")
  off = lambda seqs: np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
  data = {"prompt_flat": np.concatenate(prompts).astype(np.int32), "prompt_off": off(prompts),
          "resp_flat": np.concatenate(resps).astype(np.int32), "resp_off": off(resps),
          "target": np.asarray(targets, np.float32)}
  if shd.is_main_process():  # every process generated the same rows
    with open(os.path.join(ctx.workdir, TRACT_COUNTS), "w") as f:
      json.dump(counts, f, indent=2)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)
  ctx.writer.write("tract_gen", 0, {k: v for k, v in counts.items()
                                    if isinstance(v, (int, float))})
  logging.info("[tract_gen] %s", tract_gen_counts(ctx.workdir) if shd.is_main_process()
               else counts)
  if counts["prompts_skipped"]:
    logging.warning("[tract_gen] prompts skipped before sampling: %s", counts["prompts_skipped"])
  return data


# ---------------------------------------------------------------------------------------------
# RL (REAL and standard RL)


def _pad_left(a: np.ndarray, width: int, value=0) -> np.ndarray:
  extra = width - a.shape[1]
  if extra <= 0:
    return a
  return np.pad(a, ((0, 0), (extra, 0)), constant_values=value)


def rollout_round(ctx: Context, params, ref_params, prompts: dict[str, np.ndarray], key,
                  score_fn, method: str, adv_settings: rollout.AdvantageSettings,
                  gen: dict[str, np.ndarray] | None = None):
  """One generation round: returns (rows dict of [N,...] arrays, kept groups [G], stats, times).

  `gen` (the output format of `rollout.sample_cots`) replaces sampling, e.g. in tests."""
  c = ctx.config
  rl = c.rl
  n = rl.group_size
  st = ctx.score_tokens
  settings = rollout.SamplerSettings(max_new_tokens=rl.max_response_len,
                                     temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k)
  t0 = time.time()
  if gen is None:
    p = prompts["prompt_tokens"].shape[0]
    chunk = rl.sample_prompts or p
    gens = []
    for j, s in enumerate(range(0, p, chunk)):
      gens.append(rollout.sample_cots(
          ctx.graphdef, params, prompts["prompt_tokens"][s:s + chunk],
          prompts["prompt_mask"][s:s + chunk], jax.random.fold_in(key, 2 * j), settings, st,
          num_samples=n, mesh=ctx.mesh, pad_id=ctx.pad_id,
          prompt_buckets=data_utils.buckets(c, int(c.data.max_prompt_len))))
    # Prompts of different chunks share one bucket width only if their longest prompts do.
    width = max(g["prompt_tokens"].shape[1] for g in gens)
    for g in gens:
      g["prompt_tokens"] = _pad_left(g["prompt_tokens"], width, ctx.pad_id)
      g["prompt_mask"] = _pad_left(g["prompt_mask"], width, 0)
    gen = {k: np.concatenate([g[k] for g in gens]) for k in gens[0]}
  t_roll = time.time() - t0

  t1 = time.time()
  seqs = rollout.build_sequences(gen["prompt_tokens"], gen["prompt_mask"], gen["response"],
                                 gen["length"], pad_id=ctx.pad_id, extra=1)
  target = np.repeat(prompts["target"], n).astype(np.float32)
  target_int = np.repeat(prompts["target_int"], n)
  target_id = rollout.target_token_ids(target, st)
  chunk_rows = rl.score_batch_size or rl.micro_batch_size or rl.mini_batch_size
  sc = rollout.run_scoring(score_fn, params, seqs, target_id, jax.random.fold_in(key, 1),
                           ctx.mesh, chunk=chunk_rows)
  valid = gen["found"]
  sampled = rollout.sampled_scores(sc["sampled"], valid & sc["sampled_is_score"], st)
  binary = np.asarray(obj.binary_reward(sampled, target_int)).astype(np.float32)
  adv = rollout.compute_advantages(sc["y_hat"], sc["target_logp"], target, binary, valid, n,
                                   adv_settings)
  g = len(target) // n
  keep_g = rollout.group_filter(binary.reshape(g, n), rl.filter)
  rows = {k: seqs[k] for k in ("tokens", "mask", "score_pos", "cot_mask")}
  rows["old_lp"] = sc["lp"].astype(np.float32)
  if method == "grpo":
    # The sampled score token is part of the standard-RL action: append it to valid rows.
    lp_ = gen["prompt_tokens"].shape[1]
    r_idx = np.nonzero(valid)[0]
    pos = lp_ + gen["length"][r_idx]
    rows["tokens"] = rows["tokens"].copy()
    rows["mask"] = rows["mask"].copy()
    rows["cot_mask"] = rows["cot_mask"].copy()
    rows["tokens"][r_idx, pos] = sc["sampled"][r_idx]
    rows["mask"][r_idx, pos] = True
    rows["cot_mask"][r_idx, pos] = 1.0
    rows["old_lp"][r_idx, pos] = sc["sampled_logp"][r_idx]
  if ref_params is not None:
    ref_seqs = dict(rows)
    ref = rollout.run_scoring(score_fn, ref_params, ref_seqs, target_id,
                              jax.random.fold_in(key, 3), ctx.mesh, chunk=chunk_rows,
                              probe=sc["sampled"])
    rows["ref_lp"] = ref["lp"].astype(np.float32)
    if method == "grpo":
      rows["ref_lp"][r_idx, pos] = ref["probe_logp"][r_idx]
  else:
    rows["ref_lp"] = np.zeros_like(rows["old_lp"])
  rows.update(target=target, target_id=target_id.astype(np.int32), adv=adv["adv"],
              pg_keep=adv["pg_keep"], refine_keep=adv["refine_keep"])
  t_score = time.time() - t1
  lengths = gen["length"].astype(np.float32)
  stats = {
      "rows": float(len(target)), "groups": float(g), "kept_groups": float(keep_g.sum()),
      "reward_sum": float(adv["reward"].sum()), "reward_sq": float((adv["reward"] ** 2).sum()),
      "binary_sum": float(binary.sum()),
      "y_hat_sum": float(sc["y_hat"][valid].sum()), "y_hat_sq": float((sc["y_hat"][valid] ** 2).sum()),
      "abs_err_sum": float(np.abs(sc["y_hat"] - target)[valid].sum()),
      "score_mass_sum": float(sc["score_mass"][valid].sum()),
      "valid": float(valid.sum()), "truncated": float(gen["truncated"].sum()),
      "eos": float(gen["eos"].sum()), "length_sum": float(lengths.sum()),
      "gen_tokens": float(np.minimum(gen["length"], rl.max_response_len).sum()),
      "adv_abs_sum": float(np.abs(adv["adv"]).sum()),
      "adv_sum": float(adv["adv"].sum()),
      # Groups whose rewards differ (a non-zero advantage somewhere), under either reward.
      "signal_binary_groups": float(_groups_with_signal(binary, n).sum()),
      "signal_regression_groups": float(_groups_with_signal(
          np.where(valid, -(sc["y_hat"] - target) ** 2, -1e3), n).sum()),
  }
  return rows, keep_g, stats, t_roll, t_score


def _groups_with_signal(rewards: np.ndarray, n: int, tol: float = 1e-6) -> np.ndarray:
  """[G] bool: the group's n rewards are not all equal."""
  return np.ptp(rewards.reshape(-1, n), axis=1) > tol


def _assemble(buffer: list[dict[str, np.ndarray]], rows_needed: int) -> dict[str, np.ndarray]:
  """Concatenates buffered rows (left-padding sequences to a common width) and pads with
  zero-weight rows up to `rows_needed` (static shapes when the buffer is not full)."""
  width = max(b["tokens"].shape[1] for b in buffer)
  seq_keys = ("tokens", "mask", "cot_mask", "old_lp", "ref_lp")
  parts = []
  for b in buffer:
    shift = width - b["tokens"].shape[1]
    b = dict(b)
    for k in seq_keys:
      b[k] = _pad_left(b[k], width, False if k == "mask" else 0)
    b["score_pos"] = b["score_pos"] + shift
    parts.append(b)
  out = {k: np.concatenate([p[k] for p in parts])[:rows_needed] for k in parts[0]}
  have = out["tokens"].shape[0]
  if have < rows_needed:
    fill = rows_needed - have
    for k in out:
      out[k] = np.concatenate([out[k], np.repeat(out[k][:1], fill, 0)])
    out["pg_keep"][have:] = 0.0
    out["refine_keep"][have:] = 0.0
  return out


def run_rl(ctx: Context, params_in, *, method: str, main: bool = True):
  """REAL (`method="real"`) or standard RL (`"grpo"`); returns the final parameters."""
  c = ctx.config
  rl = c.rl
  n = rl.group_size
  rows_per_update = rl.buffer_size * n
  mini = rl.mini_batch_size
  per_update = rl.epochs * (rows_per_update // mini)
  total_opt_steps = rl.steps * per_update
  tx = state_lib.optimizer_from_config(c.optim, lr=rl.lr, steps=total_opt_steps)
  ref_params = _copy(params_in) if rl.kl_coef else None
  ck, state, shardings, start, meta = _start_stage(ctx, "rl", params_in, tx, copy_params=False)
  if meta.get("done"):
    ck.close()
    return state["params"]
  batcher = data_utils.make_batcher(c, ctx.train_source, ctx.tokenizer, ctx.score_tokens,
                                    batch_size=rl.prompts_per_step, with_targets=False,
                                    shuffle=True, seed=c.seed * 1000 + 17)
  if meta.get("data"):
    batcher.restore(meta["data"])
  best = meta.get("best")
  s = config_lib.rl_settings(c, method, ctx.score_tokens.values)
  adv_settings = rollout.AdvantageSettings(
      reward=s["reward"], shaping=rl.shaping, shaping_weight=rl.shaping_weight,
      estimator=s["estimator"], normalize=s["normalize"], clip=s["clip"], ddof=s["ddof"],
      eps=s["eps"], invalid=rl.invalid, format_penalty=s["format_penalty"])
  logging.info("[rl] %s; invalid rows: %s (reward -%g)", s["label"], rl.invalid,
               s["format_penalty"])
  if method == "real" and rl.aggregation == "sequence-sum":
    gaps = config_lib.exactness_gaps(c)
    if gaps:
      logging.warning("[rl] sequence-sum, but the expected gradient is NOT exactly -grad J: %s",
                      "; ".join(gaps))
    else:
      logging.info("[rl] exact generalized policy gradient: E[grad loss] = -grad J")
  loss_cfg = steps_lib.RLLossConfig(
      beta=rl.beta, lam=rl.lam, renormalize=rl.renormalize, aggregation=rl.aggregation,
      policy_loss=s["policy_loss"], clip_eps=rl.clip_eps,
      score_temperature=rl.score_temperature, kl_coef=rl.kl_coef,
      kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef,
      response_width=rl.max_response_len + 1)  # build_sequences(extra=1)'s response columns
  loss = (steps_lib.grpo_objective(loss_cfg) if method == "grpo"
          else steps_lib.real_objective(ctx.score_tokens, loss_cfg))
  score_fn = rollout.cached_score_fn(
      ctx.score_fns, ctx.graphdef, ctx.score_tokens, ctx.mesh,
      score_temperature=rl.score_temperature, renormalize=rl.renormalize,
      sample_temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k, greedy=False,
      response_width=rl.max_response_len + 1)
  num_micro = mini // rl.micro_batch_size if rl.micro_batch_size else 1
  step_fns: dict[int, Any] = {}
  base_key = jax.random.PRNGKey(c.seed)
  prog = Progress("rl", rl.steps, start=start, every=1, unit="update")
  for u in range(start, rl.steps):
    key_u = jax.random.fold_in(base_key, u)
    buffer, kept_prompts, rounds = [], 0, 0
    agg: dict[str, float] = {}
    t_roll = t_score = 0.0
    while kept_prompts < rl.buffer_size and rounds < rl.max_rounds:
      prompts = next(batcher)
      rows, keep_g, stats, tr, ts = rollout_round(
          ctx, state["params"], ref_params, prompts, jax.random.fold_in(key_u, rounds),
          score_fn, method, adv_settings)
      t_roll += tr
      t_score += ts
      for k, v in stats.items():
        agg[k] = agg.get(k, 0.0) + v
      if keep_g.any():
        row_keep = np.repeat(keep_g, n)
        buffer.append({k: v[row_keep] for k, v in rows.items()})
        kept_prompts += int(keep_g.sum())
      rounds += 1
    t2 = time.time()
    step_metrics = []
    if buffer:
      data = _assemble(buffer, rows_per_update)
      width = data["tokens"].shape[1]
      if width not in step_fns:
        example = {k: v[:mini] for k, v in data.items()}
        step_fns[width] = steps_lib.make_train_step(loss, ctx.graphdef, tx, ctx.mesh, shardings,
                                                    example, num_micro=num_micro)
      step_fn = step_fns[width]
      for e in range(rl.epochs):
        order = (np.random.default_rng([c.seed, u, e]).permutation(rows_per_update)
                 if rl.shuffle else np.arange(rows_per_update))
        for m in range(rows_per_update // mini):
          idx = order[m * mini:(m + 1) * mini]
          mb = {k: v[idx] for k, v in data.items()}
          if not (mb["pg_keep"].any() or mb["refine_keep"].any()):
            continue  # only padding rows (buffer not full): no step, not even AdamW momentum
          state, met = step_fn(state, steps_lib.put_batch(mb, ctx.mesh))
          step_metrics.append(met)
      step_metrics = [{k: float(v) for k, v in s.items()} for s in shd.to_host(step_metrics)]
    t_update = time.time() - t2
    done = u + 1
    metrics = _rl_metrics(agg, step_metrics, rounds, kept_prompts, t_roll, t_score, t_update,
                          buffer_rows=rows_per_update)
    ctx.writer.write("rl", done, metrics)
    prog.update(done, fmt_metrics(metrics, ("reward_mean", "abs_err_rollout", "keep_rate",
                                            "truncated_frac", "loss", "pg_loss", "grad_norm")),
                force=True)
    best = _maybe_eval(ctx, "rl", done, rl.steps, state["params"], best, main)
    if done % c.checkpoint.every == 0 or done == rl.steps:
      ck.save(done, state, {"data": batcher.state(), "done": done == rl.steps, "best": best,
                            "stage": "rl"})
    _check_kill(ctx, ck, done - start, main)
  ck.close()
  ctx.writer.flush()
  return state["params"]


def _rl_metrics(agg, step_metrics, rounds, kept_prompts, t_roll, t_score, t_update, buffer_rows):
  rows = max(agg.get("rows", 0.0), 1.0)
  valid = max(agg.get("valid", 0.0), 1.0)
  mean_r = agg.get("reward_sum", 0.0) / rows
  y_mean = agg.get("y_hat_sum", 0.0) / valid
  m = {
      "rounds": rounds, "prompts_kept": kept_prompts,
      "keep_rate": agg.get("kept_groups", 0.0) / max(agg.get("groups", 0.0), 1.0),
      "reward_mean": mean_r,
      "reward_std": float(np.sqrt(max(agg.get("reward_sq", 0.0) / rows - mean_r ** 2, 0.0))),
      "binary_acc": agg.get("binary_sum", 0.0) / rows,
      "signal_binary": agg.get("signal_binary_groups", 0.0) / max(agg.get("groups", 0.0), 1.0),
      "signal_regression": (agg.get("signal_regression_groups", 0.0)
                            / max(agg.get("groups", 0.0), 1.0)),
      "y_hat_mean": y_mean,
      "y_hat_std": float(np.sqrt(max(agg.get("y_hat_sq", 0.0) / valid - y_mean ** 2, 0.0))),
      "abs_err_rollout": agg.get("abs_err_sum", 0.0) / valid,
      "score_mass": agg.get("score_mass_sum", 0.0) / valid,
      "truncated_frac": agg.get("truncated", 0.0) / rows,
      "eos_before_delimiter_frac": agg.get("eos", 0.0) / rows,
      "response_len_mean": agg.get("length_sum", 0.0) / rows,
      "adv_abs_mean": agg.get("adv_abs_sum", 0.0) / rows,
      "adv_mean": agg.get("adv_sum", 0.0) / rows,
      "time_rollout": t_roll, "time_scoring": t_score, "time_update": t_update,
      "gen_tokens_per_s": agg.get("gen_tokens", 0.0) / max(t_roll, 1e-9),
      "optimizer_steps": len(step_metrics),
  }
  if step_metrics:
    for k in step_metrics[0]:
      if k == "skipped":
        m[k] = step_metrics[-1][k]
      else:
        m[k] = float(np.mean([s[k] for s in step_metrics]))
    m["loss_first"] = step_metrics[0]["loss"]
  return m
