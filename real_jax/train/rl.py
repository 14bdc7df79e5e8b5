"""The RL stage: REAL (`method="real"`) and standard RL (`"grpo"`), from prompts to updates.

One update (`run_rl`), the way to read it top down:

  1. rounds of `rollout_round` until the buffer holds `rl.buffer_size` kept prompts:
     prompts [P, Lp] --`readout.sample_cots`--> n CoTs per prompt (rows i*n .. i*n+n-1 are the
     group of prompt i, one ordering kept throughout) --`readout.build_sequences`--> prompt ⊕
     CoT --`readout.run_scoring`--> y_hat, log pi(y*|x,c), the sampled score token, the CoT's
     log-probs (old policy) --`compute_advantages`--> rewards (regression -(y_hat - y*)^2 with
     shaping by pi(y*), or binary 1[sampled == y*]) and group advantages
     (`objectives.real_advantages` / `group_advantages`) --`group_filter`--> the kept groups;
     the round's rows are one typed `RLBatch`;
  2. `Buffer.assemble` -> one `RLBatch` of `rl.buffer_size x rl.group_size` rows;
  3. `rl.epochs` passes of mini-batches through `steps.make_train_step` with the loss
     `steps.real_objective` (REAL) or `steps.grpo_objective`, built from `objectives.py`.

Rows whose CoT never reached the delimiter ("invalid": truncated at max tokens, or EOS first)
have no score position. Rule `invalid="penalize"` (default): they stay in the policy-gradient
term with reward `-format_penalty` (and pi(y*) = 1e-8 for the shaping reward) and are excluded
from the refinement term; `invalid="drop"`: they are excluded from both terms and from the group
baselines. Either way they are counted (`truncated_frac`, `eos_before_delimiter_frac`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from real_jax import layout, models, readout
from real_jax import objectives as obj
from real_jax import sharding as shd
from real_jax.judge.scores import ScoreTokens
from real_jax.train import config_lib, data_utils, packing, state as state_lib
from real_jax.train import steps as steps_lib
from real_jax.registry import Registry
from real_jax.train import settings as settings_lib
from real_jax.train.settings import AdvantageSettings, RLSettings
from real_jax.train.batch import RLBatch
from real_jax.train.metrics import Progress, RolloutStats, fmt_metrics, rl_update_metrics
from real_jax.train.runner import Run

__all__ = ["LOG_PROB_FLOOR", "GroupAdvantages", "compute_advantages", "group_filter",
    "groups_with_signal", "RolloutSettings", "RolloutSamples", "sample_rows", "Round",
    "rollout_round", "Buffer", "loss_config",
    "rl_objective", "RL_OBJECTIVES", "run_rl"]

LOG_PROB_FLOOR = float(np.log(1e-8))  # log pi(y*) of an invalid row (and the floor of all rows)


# ---------------------------------------------------------------------------------------------
# Rewards, advantages, filter (host numpy around the objectives' jitted functions)


class GroupAdvantages(NamedTuple):
  """Rewards and advantages of N = G * n rows, and which rows enter each loss term."""
  reward: np.ndarray  # [N]
  advantage: np.ndarray  # [N], constant over each CoT
  pg_keep: np.ndarray  # [N] rows in the policy-gradient term (before the group filter)
  refine_keep: np.ndarray  # [N] rows in the refinement term (those with a score)


def compute_advantages(y_hat: np.ndarray, target_logp: np.ndarray, target: np.ndarray,
                       binary: np.ndarray, valid: np.ndarray, group_size: int,
                       s: AdvantageSettings) -> GroupAdvantages:
  """Rewards and advantages of N = G * n rows (rows grouped by prompt).

  Returns `GroupAdvantages` of [N] arrays.
  """
  n = group_size
  g = y_hat.shape[0] // n
  in_pg = valid if s.invalid == "drop" else np.ones_like(valid)
  mask = in_pg.reshape(g, n).astype(np.float32)
  recipe = dict(s.recipe)
  if s.reward == "binary":
    reward = np.where(valid, binary, 0.0).astype(np.float32)
    adv = obj.group_advantages(jnp.asarray(reward.reshape(g, n)), mask=jnp.asarray(mask), **recipe)
  else:
    reward = np.where(valid, np.asarray(obj.REWARDS.lookup(s.reward)(y_hat, target)),
                      -s.format_penalty).astype(np.float32)
    tlp = np.where(valid, np.maximum(target_logp, LOG_PROB_FLOOR), LOG_PROB_FLOOR)
    adv = obj.real_advantages(jnp.asarray(reward.reshape(g, n)),
                              jnp.asarray(tlp.reshape(g, n), jnp.float32), s.shaping_weight,
                              shaping=s.shaping, mask=jnp.asarray(mask), **recipe)
  return GroupAdvantages(reward=reward, advantage=np.asarray(adv).reshape(-1).astype(np.float32),
                         pg_keep=in_pg.astype(np.float32), refine_keep=valid.astype(np.float32))


def group_filter(binary: np.ndarray, kind: str) -> np.ndarray:
  """[G, n] binary rewards -> [G] bool groups to train on (`objectives.GROUP_FILTERS`):
  partial: some but not all samples got the exact score (authors' default, DAPO-style);
  all: every group; not_all_correct: mean < 1; not_all_wrong: mean > 0."""
  return np.asarray(obj.GROUP_FILTERS.lookup(kind)(jnp.asarray(binary)))


def groups_with_signal(rewards: np.ndarray, n: int, tol: float = 1e-6) -> np.ndarray:
  """[G] bool: the group's n rewards are not all equal."""
  return np.ptp(rewards.reshape(-1, n), axis=1) > tol


# ---------------------------------------------------------------------------------------------
# One rollout round


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """How a round samples and scores its rows (the config's `rl` block: `from_config`)."""
  sampler: readout.SamplerSettings
  group_size: int
  filter: str = "partial"  # one of objectives.GROUP_FILTERS
  standard_rl: bool = False  # the sampled score token is part of the action (method "grpo")
  sample_prompts: int = 0  # prompts per sampler call (0: all of the round's prompts)
  score_rows: int = 64  # rows per scoring call
  prompt_buckets: tuple[int, ...] = ()
  # The scoring pass's outputs from the sampler (`readout.scores_from_samples`), at these
  # score-position settings (those of the `score_fn` it replaces).
  scores_from_sampler: bool = False
  score_temperature: float = 1.0
  renormalize: bool = False

  @classmethod
  def from_config(cls, config, rl_settings: RLSettings) -> "RolloutSettings":
    rl = config.rl
    return cls(sampler=readout.SamplerSettings(max_new_tokens=rl.max_response_len,
                                               temperature=rl.temperature, top_p=rl.top_p,
                                               top_k=rl.top_k),
               group_size=rl.group_size, filter=rl.filter,
               standard_rl=rl_settings.defaults.score_in_action,
               sample_prompts=rl.sample_prompts,
               score_rows=rl.score_batch_size or rl.micro_batch_size or rl.mini_batch_size,
               prompt_buckets=data_utils.prompt_buckets(config),
               scores_from_sampler=bool(rl.scores_from_sampler) and not needs_scoring_pass(
                   config, rl_settings),
               score_temperature=rl.score_temperature, renormalize=rl.renormalize)


def needs_scoring_pass(config, rl_settings: RLSettings) -> bool:
  """Whether the loss reads the rollout's old log-probs off-policy (a PPO ratio over several
  optimiser steps per update), so they come from the teacher-forced pass the train step
  repeats, not from the decode steps (`rl.scores_from_sampler` then keeps the full pass)."""
  return (rl_settings.policy_loss == "ppo"
          and settings_lib.optimizer_steps_per_update(config) > 1)


class RolloutSamples(NamedTuple):
  """A rollout round's rows as a researcher reads them (host arrays over N = P * n rows, row
  i*n+j = sample j of prompt i): `sample_rows` turns the first groups into text."""
  prompt_tokens: np.ndarray  # [N, Lp] left-padded
  prompt_mask: np.ndarray  # [N, Lp]
  response: np.ndarray  # [N, R] the CoT (through the delimiter when found)
  length: np.ndarray  # [N] its tokens
  status: np.ndarray  # [N] str: delimiter | eos | truncated
  sampled_score: np.ndarray  # [N] the score sampled after the delimiter (nan: none)
  y_hat: np.ndarray  # [N] RAIL y_hat
  target: np.ndarray  # [N] the label y*
  reward: np.ndarray  # [N] the method's reward
  binary_reward: np.ndarray  # [N] 1 if the sampled score is the label
  advantage: np.ndarray  # [N]


def sample_rows(samples: RolloutSamples, tokenizer, *, groups: int, group_size: int
                ) -> list[dict[str, Any]]:
  """One dict per CoT of the first `groups` groups: prompt (text), cot (text), status,
  sampled_score, y_hat, target, reward, binary_reward, advantage, cot_tokens."""
  rows = []
  for i in range(min(groups * group_size, len(samples.length))):
    prompt = samples.prompt_tokens[i][samples.prompt_mask[i].astype(bool)]
    score = float(samples.sampled_score[i])
    rows.append({
        "group": i // group_size, "sample": i % group_size,
        "prompt": tokenizer.decode(prompt.tolist()) if i % group_size == 0 else "",
        "cot": tokenizer.decode(samples.response[i, :int(samples.length[i])].tolist()),
        "status": str(samples.status[i]),
        "sampled_score": score if np.isfinite(score) else None,
        "y_hat": float(samples.y_hat[i]), "target": float(samples.target[i]),
        "reward": float(samples.reward[i]), "binary_reward": float(samples.binary_reward[i]),
        "advantage": float(samples.advantage[i]), "cot_tokens": int(samples.length[i])})
  return rows


class Round(NamedTuple):
  """What one rollout round returns: its rows, the groups the filter keeps, their statistics,
  where the time went, and the rows to read (`RolloutSamples`)."""
  batch: RLBatch  # N = P * n rows
  keep_groups: np.ndarray  # [P] bool
  stats: RolloutStats
  t_rollout: float
  t_scoring: float
  samples: RolloutSamples | None = None


def rollout_round(graphdef, params, ref_params, prompts: dict[str, np.ndarray], key, *,
                  settings: RolloutSettings, advantages: AdvantageSettings, score_fn,
                  score_tokens: ScoreTokens, mesh: Mesh, pad_id: int,
                  gen: readout.Samples | None = None) -> Round:
  """Samples n CoTs per prompt, scores them (with `score_fn`, and `ref_params` when given: the
  reference log-probs of a KL term), and computes rewards, advantages and the group filter.

  `prompts` is a `JudgeBatcher` batch (prompt_tokens, prompt_mask, target, target_int); `gen`
  (`readout.Samples`, what `readout.sample_cots` returns) replaces sampling, e.g. in tests.
  """
  if score_tokens.multi_token and (settings.standard_rl or settings.scores_from_sampler):
    raise ValueError(
        f"scores {score_tokens.scale.spec} are several tokens: " + (
            "standard RL's action ends with one score token; use method=real"
            if settings.standard_rl else "set rl.scores_from_sampler=False (the decode step "
            "reads one score token)"))
  n = settings.group_size
  t0 = time.time()
  if gen is None:
    p = prompts["prompt_tokens"].shape[0]
    chunk = settings.sample_prompts or p
    gens = []
    for j, s in enumerate(range(0, p, chunk)):
      gens.append(readout.sample_cots(
          graphdef, params, prompts["prompt_tokens"][s:s + chunk],
          prompts["prompt_mask"][s:s + chunk], jax.random.fold_in(key, 2 * j), settings.sampler,
          score_tokens, num_samples=n, mesh=mesh, pad_id=pad_id,
          prompt_buckets=settings.prompt_buckets, capture_scores=settings.scores_from_sampler,
          score_temperature=settings.score_temperature))
    # Prompts of different chunks share one bucket width only if their longest prompts do.
    gen = readout.Samples.concatenate(gens, pad_id)
  t_roll = time.time() - t0

  t1 = time.time()
  seqs = readout.build_sequences(gen.prompt_tokens, gen.prompt_mask, gen.response,
                                 gen.length, pad_id=pad_id, extra=1)
  target = np.repeat(prompts["target"], n).astype(np.float32)
  target_int = np.repeat(prompts["target_int"], n)
  target_id = readout.target_token_ids(target, score_tokens)
  if settings.scores_from_sampler:
    sc = readout.scores_from_samples(gen, seqs, target_id, score_tokens,
                                     renormalize=settings.renormalize)
  else:
    sc = readout.run_scoring(score_fn, params, seqs, target_id, jax.random.fold_in(key, 1),
                             mesh, chunk=settings.score_rows)
  valid = gen.found
  sampled = np.where(valid & sc.sampled_is_score, sc.sampled_value, -1.0).astype(np.float32)
  binary = np.asarray(obj.binary_reward(sampled, target_int)).astype(np.float32)
  ga = compute_advantages(sc.y_hat, sc.target_logp, target, binary, valid, n, advantages)
  g = len(target) // n
  keep_g = group_filter(binary.reshape(g, n), settings.filter)
  tokens, mask, cot_mask = seqs.tokens, seqs.mask, seqs.cot_mask
  # The policy's entropy over the sampled CoT tokens (the rows' cot_mask before the standard-RL
  # score token is appended), from the scoring pass's own logits.
  entropy_sum = float((sc.entropy * seqs.cot_mask).sum())
  cot_tokens = float(seqs.cot_mask.sum())
  old_lp = sc.lp.astype(np.float32)
  if settings.standard_rl:
    # The sampled score token is part of the standard-RL action: append it to valid rows.
    r_idx = np.nonzero(valid)[0]
    pos = gen.prompt_tokens.shape[1] + gen.length[r_idx]
    tokens, mask, cot_mask = tokens.copy(), mask.copy(), cot_mask.copy()
    tokens[r_idx, pos] = sc.sampled[r_idx]
    mask[r_idx, pos] = True
    cot_mask[r_idx, pos] = 1.0
    old_lp[r_idx, pos] = sc.sampled_logp[r_idx]
  if ref_params is not None:
    with_score = readout.Sequences(tokens=tokens, mask=mask, score_pos=seqs.score_pos)
    ref = readout.run_scoring(score_fn, ref_params, with_score, target_id,
                              jax.random.fold_in(key, 3), mesh, chunk=settings.score_rows,
                              probe=sc.sampled)
    ref_lp = ref.lp.astype(np.float32)
    if settings.standard_rl:
      ref_lp[r_idx, pos] = ref.probe_logp[r_idx]
  else:
    ref_lp = np.zeros_like(old_lp)
  batch = RLBatch(tokens=tokens, mask=mask, score_pos=seqs.score_pos, cot_mask=cot_mask,
                  old_lp=old_lp, ref_lp=ref_lp, target=target,
                  target_id=target_id.astype(np.int32), adv=ga.advantage, pg_keep=ga.pg_keep,
                  refine_keep=ga.refine_keep)
  t_score = time.time() - t1
  y_hat = sc.y_hat
  stats = RolloutStats(
      rows=float(len(target)), groups=float(g), kept_groups=float(keep_g.sum()),
      reward_sum=float(ga.reward.sum()), reward_sq=float((ga.reward ** 2).sum()),
      binary_sum=float(binary.sum()),
      y_hat_sum=float(y_hat[valid].sum()), y_hat_sq=float((y_hat[valid] ** 2).sum()),
      abs_err_sum=float(np.abs(y_hat - target)[valid].sum()),
      score_mass_sum=float(sc.score_mass[valid].sum()),
      valid=float(valid.sum()), truncated=float(gen.truncated.sum()),
      eos=float(gen.eos.sum()), length_sum=float(gen.length.astype(np.float32).sum()),
      length_max=float(gen.length.max(initial=0)),
      gen_tokens=float(np.minimum(gen.length, settings.sampler.max_new_tokens).sum()),
      adv_abs_sum=float(np.abs(ga.advantage).sum()), adv_sum=float(ga.advantage.sum()),
      signal_binary_groups=float(groups_with_signal(binary, n).sum()),
      signal_regression_groups=float(groups_with_signal(
          np.where(valid, -(y_hat - target) ** 2, -1e3), n).sum()),
      entropy_sum=entropy_sum, cot_tokens=cot_tokens)
  samples = RolloutSamples(
      prompt_tokens=gen.prompt_tokens, prompt_mask=gen.prompt_mask, response=gen.response,
      length=gen.length,
      status=np.where(gen.found, "delimiter", np.where(gen.eos, "eos", "truncated")),
      sampled_score=np.where(sampled >= 0, sampled, np.nan), y_hat=np.asarray(y_hat),
      target=target, reward=np.asarray(ga.reward), binary_reward=binary,
      advantage=np.asarray(ga.advantage))
  return Round(batch, keep_g, stats, t_roll, t_score, samples)


# ---------------------------------------------------------------------------------------------
# The buffer between rollouts and the update


class Buffer:
  """The rows of the groups that rollouts keep, until an update has enough prompts."""

  def __init__(self, group_size: int):
    self.group_size = group_size
    self.parts: list[RLBatch] = []
    self.kept_prompts = 0

  def add(self, r: Round) -> None:
    if r.keep_groups.any():
      self.parts.append(r.batch.take(np.repeat(r.keep_groups, self.group_size)))
      self.kept_prompts += int(r.keep_groups.sum())

  def __bool__(self) -> bool:
    return bool(self.parts)

  def assemble(self, rows: int) -> RLBatch:
    """The buffered rows (sequences left-padded to a common width), cut or padded to `rows`;
    padding rows are copies of the first with zero weight in both terms (static shapes when
    the buffer is not full)."""
    return RLBatch.concat(self.parts).take(slice(0, rows)).pad_rows(rows)


# ---------------------------------------------------------------------------------------------
# The stage


def loss_config(config, rl_settings: RLSettings, response_width: int | None = None
                ) -> steps_lib.RLLossConfig:
  """The RL loss's static settings; `response_width`: the response columns of the batches it
  sees (default: the full region, `rl.max_response_len + 1`; narrower for token-budget
  micro-batches)."""
  rl = config.rl
  return steps_lib.RLLossConfig(
      beta=rl.beta, lam=rl.lam, renormalize=rl.renormalize, aggregation=rl.aggregation,
      policy_loss=rl_settings.policy_loss, clip_eps=rl.clip_eps,
      clip_eps_high=rl.clip_eps_high or None,
      score_temperature=rl.score_temperature, kl_coef=rl.kl_coef,
      kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef,
      # build_sequences(extra=1)'s response columns
      response_width=response_width or rl.max_response_len + 1)


# The train step's loss of an RL method by `RLDefaults.objective`: fn(score_tokens, loss config).
RL_OBJECTIVES = Registry("RL objective")
RL_OBJECTIVES.register("real")(steps_lib.real_objective)
RL_OBJECTIVES.register("grpo")(lambda score_tokens, cfg: steps_lib.grpo_objective(cfg))


def rl_objective(score_tokens, config, rl_settings: RLSettings,
                 response_width: int | None = None) -> steps_lib.Loss:
  """The train step's loss of an RL method (`RLDefaults.objective`, in `RL_OBJECTIVES`)."""
  build = RL_OBJECTIVES.lookup(rl_settings.defaults.objective)
  return build(score_tokens, loss_config(config, rl_settings, response_width))


def run_rl(run: Run, params_in, *, main: bool = True):
  """The rl stage of an RL method (REAL or standard RL, `run.settings.rl`); returns the final
  parameters."""
  c = run.config
  rl = c.rl
  score_tokens = run.vocab.score_tokens
  s = run.settings.rl
  n = rl.group_size
  rows_per_update = rl.buffer_size * n
  mini = rl.mini_batch_size
  total_opt_steps = rl.steps * rl.epochs * (rows_per_update // mini)
  tx = state_lib.optimizer_from_config(c.optim, lr=rl.lr, steps=total_opt_steps)
  # The KL reference: the policy RL starts from (a copy); with LoRA, the frozen base, read from
  # the current parameters with the adapters' B zeroed at each rollout (no second copy of the
  # weights; the train step donates the state, so the base buffers are the current state's).
  lora_ref = bool(rl.kl_coef and run.model_cfg.lora_rank)
  ref_params = (jax.tree.map(lambda x: x.copy(), params_in)
                if rl.kl_coef and not lora_ref else None)
  reference = lambda params: models.without_lora(params) if lora_ref else ref_params
  stage = run.runner.open("rl", params_in, tx, total=rl.steps, main=main)
  if stage.finished:
    return stage.close()
  batcher = data_utils.make_batcher(c, run.sources.train, run.vocab.tokenizer, score_tokens,
                                    batch_size=rl.prompts_per_step, with_targets=False,
                                    shuffle=True, seed=data_utils.data_order_seed(c.seed, "rl"))
  stage.restore_data(batcher)
  logging.info("[rl] %s; invalid rows: %s (reward -%g)", s.label, rl.invalid,
               s.advantages.format_penalty)
  if s.defaults.objective == "real" and rl.aggregation == "sequence-sum":
    gaps = config_lib.exactness_gaps(c)
    if gaps:
      logging.warning("[rl] sequence-sum, but the expected gradient is NOT exactly -grad J: %s",
                      "; ".join(gaps))
    else:
      logging.info("[rl] exact generalized policy gradient: E[grad loss] = -grad J")
  loss = rl_objective(score_tokens, c, s)
  settings = RolloutSettings.from_config(c, s)
  if rl.scores_from_sampler:
    logging.info("[rl] scores from the sampler: %s", "yes" if settings.scores_from_sampler else
                 "no, a PPO ratio over several optimiser steps per update reads the old "
                 "log-probs off-policy: they come from the full scoring pass")
  score_fn = readout.make_score_fn(
      run.graphdef, score_tokens, run.mesh, score_temperature=rl.score_temperature,
      renormalize=rl.renormalize, sample_temperature=rl.temperature, top_p=rl.top_p,
      top_k=rl.top_k, greedy=False, response_width=rl.max_response_len + 1)
  num_micro = mini // rl.micro_batch_size if rl.micro_batch_size else 1
  step_fns: dict[int, Any] = {}
  full_width = rl.max_response_len + 1  # the response region of every row
  budget, budget_step = None, None
  if rl.token_budget:  # token-budget micro-batches: rows grouped by length, narrow widths
    budget = packing.TokenBudget(tokens=rl.token_budget,
                                 widths=layout.power_of_two_buckets(full_width, 16),
                                 row_multiple=shd.batch_split(run.mesh))
    budget_step = steps_lib.AccumulatingStep(
        lambda w: rl_objective(score_tokens, c, s, response_width=w or None), run.graphdef, tx,
        run.mesh, stage.shardings, nan_update_at=steps_lib.nan_updates(c.debug))
  base_key = jax.random.PRNGKey(c.seed)
  with Progress("rl", rl.steps, start=stage.start, every=1, unit="update") as prog:
    for u in range(stage.start, rl.steps):
      key_u = jax.random.fold_in(base_key, u)
      buffer, rounds = Buffer(n), 0
      stats = RolloutStats()
      t_roll = t_score = 0.0
      first_round = None
      while buffer.kept_prompts < rl.buffer_size and rounds < rl.max_rounds:
        prog.phase = (f"rollout round {rounds + 1} (at most {rl.max_rounds}): "
                      f"{rl.prompts_per_step} prompts x {n} CoTs, then the scoring pass; "
                      f"{buffer.kept_prompts}/{rl.buffer_size} prompts kept so far")
        r = rollout_round(run.graphdef, stage.state["params"], reference(stage.state["params"]),
                          next(batcher),
                          jax.random.fold_in(key_u, rounds), settings=settings,
                          advantages=s.advantages, score_fn=score_fn, score_tokens=score_tokens,
                          mesh=run.mesh, pad_id=run.vocab.pad_id)
        t_roll += r.t_rollout
        t_score += r.t_scoring
        stats = stats + r.stats
        first_round = r if first_round is None else first_round
        buffer.add(r)
        rounds += 1
      t2 = time.time()
      step_metrics = []
      if buffer:
        data = buffer.assemble(rows_per_update)
        width = data.tokens.shape[1]
        if budget is None and width not in step_fns:
          step_fns[width] = steps_lib.make_train_step(loss, run.graphdef, tx, run.mesh,
                                                      stage.shardings, data.take(slice(0, mini)),
                                                      num_micro=num_micro,
                                                      nan_update_at=steps_lib.nan_updates(c.debug))
        step_fn = step_fns.get(width)
        prog.phase = (f"{rl.epochs} epoch(s) of {rows_per_update // mini} optimiser steps on "
                      f"{rows_per_update} rows")
        for e in range(rl.epochs):
          order = (np.random.default_rng([c.seed, u, e]).permutation(rows_per_update)
                   if rl.shuffle else np.arange(rows_per_update))
          for m in range(rows_per_update // mini):
            mb = data.take(order[m * mini:(m + 1) * mini])
            if not (mb.pg_keep.any() or mb.refine_keep.any()):
              continue  # only padding rows (buffer not full): no step, not even AdamW momentum
            if budget is not None:
              micro = packing.budget_micro_batches(mb, width - full_width, budget)
              stage.state, met = budget_step(stage.state, mb, micro)
            else:
              stage.state, met = step_fn(stage.state, shd.put_batch(mb, run.mesh))
            step_metrics.append(met)
        step_metrics = [{k: float(v) for k, v in s.items()} for s in shd.to_host(step_metrics)]
      done = u + 1
      metrics = rl_update_metrics(stats, step_metrics, rounds=rounds,
                                  kept_prompts=buffer.kept_prompts, t_rollout=t_roll,
                                  t_scoring=t_score, t_update=time.time() - t2)
      metrics["rows_skipped"] = float(batcher.skipped_rows())
      run.writer.write("rl", done, metrics)
      if rl.log_samples_every and done % rl.log_samples_every == 0 and first_round:
        run.writer.write_samples("rl", done, sample_rows(
            first_round.samples, run.vocab.tokenizer, groups=rl.log_sample_groups,
            group_size=n))
      prog.update(done, fmt_metrics(metrics, ("reward_mean", "abs_err_rollout", "keep_rate",
                                              "truncated_frac", "loss", "pg_loss", "grad_norm",
                                              "skipped", "rows_skipped")),
                  force=True)
      # An update with no optimiser step (only padding rows) counts as applied, not skipped.
      applied = max((s["applied"] for s in step_metrics), default=1.0)
      stage.end_step(done, data=batcher.state(), applied=applied, check=True)
  return stage.close()
