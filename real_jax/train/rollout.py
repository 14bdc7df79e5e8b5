"""Group rollouts for REAL and standard RL: sample, locate the delimiter, teacher-forced scoring,
rewards, group advantages and the "partial" filter.

One generation round (DESIGN §4 data flow):

  prompts [P, Lp] --sampler--> n CoTs per prompt, each stopped at the delimiter (or EOS, or
  max tokens); rows i*n .. i*n+n-1 are the group of prompt i (one ordering, kept throughout)
  --> sequences prompt ⊕ CoT (delimiter included); the score position is the last delimiter
  token, whose logits predict the score token
  --> no-grad scoring pass (`real_jax.models.score_sequences`): y_hat, log pi(y*|x,c), the
  sampled score token (temperature / top-p of the rollout), CoT log-probs (old policy)
  --> rewards: regression -(y_hat - y*)^2 (+ shaping by pi(y*)) or binary 1[sampled == y*]
  --> group advantages (objectives.real_advantages / group_advantages) and the group filter.

Rows whose CoT never reached the delimiter ("invalid": truncated at max tokens, or EOS first)
have no score position. Rule `invalid="penalize"` (default): they stay in the policy-gradient
term with reward `-format_penalty` (and pi(y*) = 1e-8 for the shaping reward) and are excluded from
the refinement term; `invalid="drop"`: they are excluded from both terms and from the group
baselines. Either way they are counted (`truncated_frac`, `eos_frac`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from real_jax import objectives as obj
from real_jax import sharding as shd
from real_jax.models import score_sequences
from real_jax.judge import scores as scores_lib

LOG_PROB_FLOOR = float(np.log(1e-8))  # log pi(y*) of an invalid row (and the floor of all rows)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How CoTs are sampled (rollouts, evaluation, TRACT self-CoTs)."""
  max_new_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  greedy: bool = False
  repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the CoT


# ---------------------------------------------------------------------------------------------
# Sampling (adapter over real_jax.sampling)


def sample_cots(graphdef, params, prompt_tokens, prompt_mask, key, settings: SamplerSettings,
                score_tokens: scores_lib.ScoreTokens, *, num_samples: int, mesh: Mesh | None,
                pad_id: int, prompt_buckets: tuple[int, ...] | None = None
                ) -> dict[str, np.ndarray]:
  """n CoTs per prompt, stopped at the delimiter. Host numpy results (rows grouped by prompt):

    prompt_tokens [N, Lp], prompt_mask [N, Lp] (N = P * n, row i*n+j = sample j of prompt i),
    response [N, R] (right-padded with pad_id; ends with the delimiter if it was reached),
    length [N] (tokens kept: through the delimiter if found, else through EOS / max tokens),
    found [N] bool (delimiter reached), eos [N] bool (EOS before any delimiter),
    truncated [N] bool (neither).

  Every tokenisation of the delimiter the parser accepts (`score_tokens.variants`) is a stop
  sequence, so the sampler's first stop is the parser's first delimiter.
  """
  from real_jax import sampling
  cfg = _sampling_config(sampling, settings, score_tokens, pad_id, prompt_buckets)
  out = sampling.sample(graphdef, params, np.asarray(prompt_tokens),
                        np.asarray(prompt_mask).astype(bool), key, cfg,
                        num_samples=num_samples, mesh=mesh)
  out = shd.to_host(out)
  status = np.asarray(out.status)
  found = status == sampling.STOP_SEQUENCE
  eos = status == sampling.EOS
  truncated = status == sampling.TRUNCATED
  keep = np.where(found, np.asarray(out.stop_lengths), np.asarray(out.lengths)).astype(np.int32)
  tokens = np.asarray(out.tokens)
  cols = np.arange(tokens.shape[1])[None, :]
  response = np.where(cols < keep[:, None], tokens, pad_id).astype(np.int32)
  return {"prompt_tokens": np.asarray(out.prompt_tokens).astype(np.int32),
          "prompt_mask": np.asarray(out.prompt_mask).astype(np.int32),
          "response": response, "length": keep, "found": found, "eos": eos,
          "truncated": truncated}


def _sampling_config(sampling, settings: SamplerSettings, score_tokens, pad_id: int,
                     prompt_buckets=None):
  kw = dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_p=settings.top_p, top_k=settings.top_k, greedy=settings.greedy,
            repetition_penalty=settings.repetition_penalty,
            eos_ids=(score_tokens.eos_id,),
            stop_sequences=tuple(tuple(v) for v in score_tokens.variants), pad_id=pad_id)
  if prompt_buckets:
    kw["prompt_buckets"] = tuple(prompt_buckets)
  return sampling.SamplingConfig(**kw)


# ---------------------------------------------------------------------------------------------
# Teacher-forced sequences


def build_sequences(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, response: np.ndarray,
                    length: np.ndarray, *, pad_id: int, extra: int = 1) -> dict[str, np.ndarray]:
  """prompt ⊕ response[:length] as one left/right-padded sequence of length Lp + R + extra.

  Returns tokens [N, L], mask [N, L] (padding only; nothing else is masked), score_pos [N]
  (position of the last kept response token: for a delimiter-stopped row the last delimiter
  token, whose logits predict the score) and cot_mask [N, L] f32 (the kept response tokens).
  `extra` free slots at the end leave room for a sampled score token (standard RL).
  """
  n, lp = prompt_tokens.shape
  r = response.shape[1]
  total = lp + r + extra
  tokens = np.full((n, total), pad_id, np.int32)
  tokens[:, :lp] = prompt_tokens
  cols = np.arange(r + extra)[None, :]
  resp_mask = cols < length[:, None]
  resp = np.full((n, r + extra), pad_id, np.int32)
  resp[:, :r] = response
  tokens[:, lp:] = np.where(resp_mask, resp, pad_id)
  mask = np.concatenate([prompt_mask.astype(bool), resp_mask], axis=1)
  cot_mask = np.concatenate([np.zeros((n, lp), np.float32), resp_mask.astype(np.float32)], 1)
  score_pos = (lp + np.maximum(length, 1) - 1).astype(np.int32)
  return {"tokens": tokens, "mask": mask, "score_pos": score_pos, "cot_mask": cot_mask}


# ---------------------------------------------------------------------------------------------
# No-grad scoring pass


def make_score_fn(graphdef, score_tokens: scores_lib.ScoreTokens, mesh: Mesh, *,
                  score_temperature: float = 1.0, renormalize: bool = False,
                  sample_temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  greedy: bool = False, response_width: int = 0):
  """Jitted no-grad scoring pass over a batch of sequences.

  `response_width` > 0: `lp` only on the last `response_width` columns (the responses of
  `build_sequences`' layout; 0 before them), see `models.score_sequences`.

  `fn(params, batch, key)` with batch {tokens, mask, score_pos, target_id, probe} returns
  {lp [N, L] (token log-probs at T=1), y_hat [N], target_logp [N] (log pi(y*|x,c)),
  score_mass [N], score_probs [N, K] (pi(k|x,c) of each score token, renormalised or not as
  y_hat), sampled [N] (a token sampled at the score position), sampled_is_score [N],
  sampled_logp [N] and probe_logp [N] (log pi at T=1 of the sampled / the `probe` token)}.
  """
  from real_jax.sampling import SamplingConfig, sample_from_logits
  draw_cfg = SamplingConfig(temperature=sample_temperature if not greedy else 1.0, top_p=top_p,
                            top_k=top_k, greedy=greedy)
  ids = jnp.asarray(score_tokens.token_ids, jnp.int32)
  values = jnp.asarray(score_tokens.values, jnp.float32)
  rep = shd.replicated(mesh)

  def fn(params, batch, key):
    with shd.activation_sharding(mesh):
      out = score_sequences(graphdef, params, batch["tokens"], batch["mask"], batch["score_pos"],
                            temperature=1.0, response_width=response_width)
      logits = out.score_logits
      y_hat = obj.expected_score(logits, ids, values, renormalize=renormalize,
                                 temperature=score_temperature)
      tlp = obj.score_log_prob(logits, batch["target_id"], temperature=score_temperature)
      mass = obj.score_token_mass(logits, ids, temperature=score_temperature)
      probs = jnp.exp(obj.score_token_log_probs(logits, ids, renormalize=renormalize,
                                                temperature=score_temperature))
      # The score token drawn as the sampler would have drawn it (temperature, top-k, top-p).
      u = jax.random.uniform(key, logits.shape[:1])
      tok, _, _ = sample_from_logits(logits, u, draw_cfg)
      is_score = jnp.any(tok[:, None] == ids[None, :], axis=-1)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # policy, T = 1
      at = lambda t: jnp.take_along_axis(logp, t[:, None].astype(jnp.int32), axis=-1)[:, 0]
      return {"lp": out.token_log_probs, "y_hat": y_hat, "target_logp": tlp,
              "score_mass": mass, "score_probs": probs, "sampled": tok,
              "sampled_is_score": is_score,
              "sampled_logp": at(tok), "probe_logp": at(batch["probe"])}

  in_b = {k: shd.batch_sharding(mesh, nd) for k, nd in
          (("tokens", 2), ("mask", 2), ("score_pos", 1), ("target_id", 1), ("probe", 1))}
  out_b = {"lp": shd.batch_sharding(mesh, 2), "score_probs": shd.batch_sharding(mesh, 2),
           **{k: shd.batch_sharding(mesh, 1) for k in (
      "y_hat", "target_logp", "score_mass", "sampled", "sampled_is_score", "sampled_logp",
      "probe_logp")}}
  return jax.jit(fn, in_shardings=(None, in_b, rep), out_shardings=out_b)


def cached_score_fn(cache: dict, graphdef, score_tokens, mesh, **kw):
  """`make_score_fn` memoised in `cache` by its settings (evaluation and rollouts share one)."""
  key = tuple(sorted(kw.items()))
  if key not in cache:
    cache[key] = make_score_fn(graphdef, score_tokens, mesh, **kw)
  return cache[key]


def run_scoring(score_fn, params, seqs: dict[str, np.ndarray], target_id: np.ndarray, key,
                mesh: Mesh, chunk: int, probe: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """`score_fn` over the rows in chunks of `chunk` rows (padded to full chunks); host arrays."""
  from real_jax.train.steps import put_batch
  n = seqs["tokens"].shape[0]
  chunk = min(chunk, n)
  probe = np.zeros((n,), np.int32) if probe is None else np.asarray(probe, np.int32)
  outs = []
  for i, start in enumerate(range(0, n, chunk)):
    sl = slice(start, start + chunk)
    b = {"tokens": seqs["tokens"][sl], "mask": seqs["mask"][sl],
         "score_pos": seqs["score_pos"][sl], "target_id": target_id[sl], "probe": probe[sl]}
    short = chunk - b["tokens"].shape[0]
    if short:
      b = {k: np.concatenate([v, np.repeat(v[-1:], short, 0)], 0) for k, v in b.items()}
    o = score_fn(params, put_batch(b, mesh), jax.random.fold_in(key, i))
    o = shd.to_host(o)
    outs.append({k: np.asarray(v)[:chunk - short] for k, v in o.items()})
  return {k: np.concatenate([o[k] for o in outs], 0) for k in outs[0]}


# ---------------------------------------------------------------------------------------------
# Rewards, advantages, filter (host numpy around the objectives' jitted functions)


def target_token_ids(target: np.ndarray, score_tokens: scores_lib.ScoreTokens) -> np.ndarray:
  return np.asarray(obj.target_token_ids_for(
      jnp.asarray(target, jnp.float32), jnp.asarray(score_tokens.token_ids),
      jnp.asarray(score_tokens.values, jnp.float32)))


def sampled_scores(sampled: np.ndarray, valid: np.ndarray, score_tokens) -> np.ndarray:
  """Score value of each sampled token (-1 where it is not a score token or the row is invalid)."""
  lut = {t: v for t, v in zip(score_tokens.token_ids, score_tokens.values)}
  s = np.array([lut.get(int(t), -1.0) for t in sampled], np.float32)
  return np.where(valid, s, -1.0)


def group_filter(binary: np.ndarray, kind: str) -> np.ndarray:
  """[G, n] binary rewards -> [G] bool groups to train on.

  partial: some but not all samples got the exact score (authors' default, DAPO-style);
  all: every group; not_all_correct: mean < 1; not_all_wrong: mean > 0.
  """
  hits = binary.mean(axis=-1)
  if kind == "partial":
    return np.asarray(obj.partial_group_mask(jnp.asarray(binary)))
  if kind == "all":
    return np.ones(binary.shape[0], bool)
  if kind == "not_all_correct":
    return hits < 1.0
  if kind == "not_all_wrong":
    return hits > 0.0
  raise ValueError(f"unknown filter {kind!r}")


@dataclasses.dataclass(frozen=True)
class AdvantageSettings:
  """Rewards and group advantages of a rollout (defaults: the authors' REAL recipe)."""
  reward: str = "regression"  # regression (REAL) | binary (standard RL)
  shaping: str = "prob"
  shaping_weight: float = 1.0
  estimator: str = "rloo"
  normalize: bool = True
  clip: float | None = 1.0
  invalid: str = "penalize"
  format_penalty: float = 25.0  # objectives.worst_squared_error of scores 1..5, full vocabulary
  ddof: int = 0  # std of the normalisation: 0 population (authors), 1 sample (verl's GRPO)
  eps: float = 1e-8

  @classmethod
  def from_recipe(cls, recipe: str, **kw) -> "AdvantageSettings":
    """Settings of a named recipe in `objectives.ADVANTAGE_RECIPES` ("authors", "grpo", "rloo")."""
    r = obj.ADVANTAGE_RECIPES[recipe]
    return cls(estimator=r["estimator"], normalize=r["normalize"], clip=r["clip"],
               ddof=r["ddof"], eps=r["eps"], **kw)

  def describe(self) -> str:
    return obj.describe_advantages(self.estimator, self.normalize, self.clip, self.ddof,
                                   self.eps)


def compute_advantages(y_hat: np.ndarray, target_logp: np.ndarray, target: np.ndarray,
                       binary: np.ndarray, valid: np.ndarray, group_size: int,
                       s: AdvantageSettings) -> dict[str, np.ndarray]:
  """Rewards and advantages of N = G * n rows (rows grouped by prompt).

  Returns {"reward" [N], "adv" [N], "pg_keep" [N] (rows in the PG term before the group filter),
  "refine_keep" [N]}.
  """
  n = group_size
  g = y_hat.shape[0] // n
  in_pg = valid if s.invalid == "drop" else np.ones_like(valid)
  mask = in_pg.reshape(g, n).astype(np.float32)
  clip = s.clip if s.clip else None
  if s.reward == "binary":
    reward = np.where(valid, binary, 0.0).astype(np.float32)
    adv = obj.group_advantages(jnp.asarray(reward.reshape(g, n)), estimator=s.estimator,
                               normalize=s.normalize, clip=clip, mask=jnp.asarray(mask),
                               ddof=s.ddof, eps=s.eps)
  else:
    reward = np.where(valid, np.asarray(obj.regression_reward(y_hat, target)),
                      -s.format_penalty).astype(np.float32)
    tlp = np.where(valid, np.maximum(target_logp, LOG_PROB_FLOOR), LOG_PROB_FLOOR)
    adv = obj.real_advantages(jnp.asarray(reward.reshape(g, n)),
                              jnp.asarray(tlp.reshape(g, n), jnp.float32), s.shaping_weight,
                              shaping=s.shaping, estimator=s.estimator, normalize=s.normalize,
                              clip=clip, mask=jnp.asarray(mask), ddof=s.ddof, eps=s.eps)
  return {"reward": reward, "adv": np.asarray(adv).reshape(-1).astype(np.float32),
          "pg_keep": in_pg.astype(np.float32),
          "refine_keep": valid.astype(np.float32)}
