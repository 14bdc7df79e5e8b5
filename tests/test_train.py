"""The jitted train steps: exact micro-batching, sharded == single device, non-finite steps
skipped, one REAL update == real_jax.objectives by hand, checkpoints, HF export."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from real_jax import objectives as obj
from real_jax import sharding as shd
from real_jax.judge.scores import ScoreTokens
from real_jax.models import get_preset, init_params, qwen3
from real_jax.models import score_sequences
from real_jax.train import checkpoint as ckpt_lib
from real_jax import readout
from real_jax.train import config_lib, packing, rl
from real_jax.train.batch import RLBatch
from real_jax.train.metrics import rl_update_metrics
from real_jax.train import state as state_lib
from real_jax.train import steps as steps_lib

pytestmark = pytest.mark.usefixtures("fast_compiles_module")  # see conftest.py


CFG = get_preset("tiny").model  # vocab 256, divides a (2, 4) fsdp x tensor mesh
ST = ScoreTokens(token_ids=(11, 12, 13, 14, 15), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                 delimiter_ids=(20, 21, 22), eos_id=1)
PAD = 0


def _mesh1():
  return shd.make_mesh({"data": 1}, devices=jax.devices()[:1])


def _params(mesh, seed=0):
  return init_params(CFG, mesh=mesh, seed=seed)


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _crafted_rollout(rng, prompts=3, n=4, lp=12, r=10):
  """Rollouts as `readout.sample_cots` returns them: valid rows end with the delimiter, some rows
  are truncated (no delimiter) or stop at EOS."""
  rows = prompts * n
  plen = rng.integers(4, lp + 1, size=prompts)
  pt = np.zeros((prompts, lp), np.int32)
  pm = np.zeros((prompts, lp), np.int32)
  for i, k in enumerate(plen):
    pt[i, lp - k:] = rng.integers(30, 256, size=k)
    pm[i, lp - k:] = 1
  response = np.zeros((rows, r), np.int32)
  length = np.zeros(rows, np.int32)
  found = np.zeros(rows, bool)
  eos = np.zeros(rows, bool)
  for j in range(rows):
    kind = ("trunc" if j in (1, 6) else "eos" if j == 9 else "ok")
    if kind == "trunc":
      response[j] = rng.integers(30, 256, size=r)
      length[j] = r
    elif kind == "eos":
      k = 5
      response[j, :k - 1] = rng.integers(30, 256, size=k - 1)
      response[j, k - 1] = ST.eos_id
      length[j] = k
      eos[j] = True
    else:
      k = int(rng.integers(1, r - 3))
      response[j, :k] = rng.integers(30, 256, size=k)
      response[j, k:k + 3] = ST.delimiter_ids
      length[j] = k + 3
      found[j] = True
  gen = readout.Samples(prompt_tokens=np.repeat(pt, n, 0), prompt_mask=np.repeat(pm, n, 0),
                        response=response, length=length, found=found, eos=eos,
                        truncated=~found & ~eos)
  batch = {"prompt_tokens": pt, "prompt_mask": pm,
           "target": np.array([2.0, 4.0, 5.0], np.float32)[:prompts],
           "target_int": np.array([2, 4, 5], np.int32)[:prompts]}
  return gen, batch


def _rl_config(**rl):
  c = config_lib.base_config()
  c.rl.group_size = 4
  c.rl.mini_batch_size = 12
  for k, v in rl.items():
    c.rl[k] = v
  return c


def _rl_settings(config, method):
  """The RL settings `config` resolves to under `method`."""
  return config_lib.rl_settings(config, ST.values, method=method)


def _round(config, method, mesh, graphdef, params, prompts, score_fn, adv, gen,
           score_tokens=ST, pad_id=PAD):
  """`rl.rollout_round` on crafted rollouts; the rows as a dict for the hand computations."""
  settings = rl.RolloutSettings.from_config(config, _rl_settings(config, method))
  r = rl.rollout_round(graphdef, params, None, prompts, jax.random.PRNGKey(0),
                       settings=settings, advantages=adv,
                       score_fn=score_fn, score_tokens=score_tokens, mesh=mesh, pad_id=pad_id,
                       gen=gen)
  return dataclasses.asdict(r.batch), r.keep_groups, r.stats


def _real_rows(beta=0.7, lam=0.5, invalid="penalize", seed=0):
  mesh = _mesh1()
  graphdef, params = _params(mesh)
  c = _rl_config(beta=beta, lam=lam, invalid=invalid)
  gen, batch = _crafted_rollout(np.random.default_rng(seed))
  adv_settings = rl.AdvantageSettings(invalid=invalid, format_penalty=16.0)
  score_fn = readout.make_score_fn(graphdef, ST, mesh)
  rows, keep_g, stats = _round(c, "real", mesh, graphdef, params, batch, score_fn, adv_settings,
                               gen)
  return mesh, graphdef, params, c, rows, gen


@pytest.fixture(scope="module")
def real_rows():
  return _real_rows(0.7, 0.5, "penalize")


@pytest.mark.parametrize("response_width", [0, 11])
def test_rollout_entropy_is_the_policy_entropy_over_the_cot_tokens(response_width):
  """The rollout's `entropy` metric: the policy's entropy (T = 1) averaged over exactly the
  sampled CoT tokens (ragged lengths, truncated and EOS rows, left-padded prompts), computed by
  the scoring pass from its chunked logits; checked against full-logit entropies by hand."""
  mesh = _mesh1()
  graphdef, params = _params(mesh)
  c = _rl_config()
  gen, batch = _crafted_rollout(np.random.default_rng(3))
  score_fn = readout.make_score_fn(graphdef, ST, mesh, response_width=response_width)
  rows, _, stats = _round(c, "real", mesh, graphdef, params, batch, score_fn,
                          rl.AdvantageSettings(format_penalty=16.0), gen)
  ent = np.asarray(steps_lib.token_entropies(graphdef, params, jnp.asarray(rows["tokens"]),
                                             jnp.asarray(rows["mask"])))
  cot = rows["cot_mask"]
  assert cot.sum() == gen.length.sum() > 0
  np.testing.assert_allclose(stats.entropy_sum, (ent * cot).sum(), rtol=1e-5)
  assert stats.cot_tokens == cot.sum()
  m = rl_update_metrics(stats, [], rounds=1, kept_prompts=3, t_rollout=1.0, t_scoring=1.0,
                        t_update=1.0)
  np.testing.assert_allclose(m["entropy"], (ent * cot).sum() / cot.sum(), rtol=1e-5)
  # A random tiny model is far from deterministic: its entropy is near log V.
  assert 0.5 * np.log(CFG.vocab_size) < m["entropy"] <= np.log(CFG.vocab_size) + 1e-4


def test_rollout_with_scores_from_sampler_equals_the_scoring_pass():
  """`rl.scores_from_sampler`: `rl.rollout_round` with real sampling gives the rows, rewards,
  advantages, old log-probs, group filter and statistics of the round with the teacher-forced
  scoring pass (same CoTs; floats within 1e-4); PPO over several optimiser steps keeps the pass."""
  mesh = _mesh1()
  graphdef, params = init_params(EX_CFG, mesh=mesh, seed=3)
  c = _rl_config(group_size=8, filter="all", max_response_len=6, top_p=1.0,
                 scores_from_sampler=True)
  c.data.max_prompt_len = 8
  rng = np.random.default_rng(0)
  prompts = {"prompt_tokens": rng.integers(2, 7, (4, 8)).astype(np.int32),
             "prompt_mask": (np.arange(8)[None, :] >= np.array([[0], [2], [3], [5]])
                             ).astype(np.int32),
             "target": np.array([4.0, 2.0, 3.5, 5.0], np.float32),
             "target_int": np.array([4, 2, 3, 5], np.int32)}
  on = rl.RolloutSettings.from_config(c, config_lib.rl_settings(c, EX_ST.values, method="real"))
  assert on.scores_from_sampler
  off = dataclasses.replace(on, scores_from_sampler=False)
  score_fn = readout.make_score_fn(graphdef, EX_ST, mesh, response_width=7)
  adv = rl.AdvantageSettings(format_penalty=16.0)
  rounds = [rl.rollout_round(graphdef, params, None, prompts, jax.random.PRNGKey(5), settings=s,
                             advantages=adv, score_fn=score_fn, score_tokens=EX_ST, mesh=mesh,
                             pad_id=0) for s in (off, on)]
  ref, got = (dataclasses.asdict(r.batch) for r in rounds)
  found = ref["refine_keep"] > 0
  assert 4 <= found.sum() < len(found) and len(set(ref["score_pos"][found])) >= 3
  for k in ("tokens", "mask", "score_pos", "cot_mask", "target", "target_id", "pg_keep",
            "refine_keep"):
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  for k in ("old_lp", "adv"):
    np.testing.assert_allclose(got[k], ref[k], atol=1e-4, err_msg=k)
  assert np.abs(ref["adv"]).max() > 0.1
  np.testing.assert_array_equal(rounds[1].keep_groups, rounds[0].keep_groups)
  for k in ("reward_sum", "y_hat_sum", "abs_err_sum", "score_mass_sum", "entropy_sum"):
    np.testing.assert_allclose(getattr(rounds[1].stats, k), getattr(rounds[0].stats, k),
                               rtol=1e-4, atol=1e-4, err_msg=k)
  # The PPO ratio over several optimiser steps reads the old log-probs off-policy: full pass.
  c.rl.epochs = 2
  ppo = config_lib.rl_settings(c, EX_ST.values, method="grpo")
  assert ppo.policy_loss == "ppo" and not rl.RolloutSettings.from_config(c, ppo).scores_from_sampler
  c.rl.epochs, c.rl.buffer_size, c.rl.mini_batch_size = 1, 4, 32  # one on-policy step
  assert rl.RolloutSettings.from_config(c, ppo).scores_from_sampler
  # Standard RL: the score token drawn after the delimiter joins the action; every old
  # log-prob, that token's included, is the teacher-forced one of the row at T = 1.
  grpo = rl.RolloutSettings.from_config(c, ppo)
  assert grpo.scores_from_sampler and grpo.standard_rl
  g = rl.rollout_round(graphdef, params, None, prompts, jax.random.PRNGKey(5), settings=grpo,
                       advantages=rl.AdvantageSettings(reward="binary", format_penalty=16.0),
                       score_fn=score_fn, score_tokens=EX_ST, mesh=mesh, pad_id=0).batch
  appended = (g.cot_mask > 0) & (ref["cot_mask"] == 0)
  assert appended.sum() == found.sum() and np.isin(g.tokens[appended], EX_ST.token_ids).any()
  tf = np.asarray(score_sequences(graphdef, params, jnp.asarray(g.tokens), jnp.asarray(g.mask),
                                  jnp.asarray(g.score_pos)).token_log_probs)
  np.testing.assert_allclose(g.old_lp[g.cot_mask > 0], tf[g.cot_mask > 0], atol=1e-4)


def test_real_update_equals_objectives_by_hand(real_rows):
  """One REAL update from the same rollouts: advantages, loss and gradient equal
  real_jax.objectives applied by hand. The step accumulates 2 micro-batches, so this also checks
  that micro-batching gives the exact full-batch token means and gradient."""
  beta, lam, invalid = 0.7, 0.5, "penalize"
  mesh, graphdef, params, c, rows, gen = real_rows
  valid = gen.found
  n = 4
  ids, values = jnp.asarray(ST.token_ids), jnp.asarray(ST.values)

  # Advantages, by hand from the same rollouts: the authors' recipe via objectives.
  out = score_sequences(graphdef, params, jnp.asarray(rows["tokens"]), jnp.asarray(rows["mask"]),
                        jnp.asarray(rows["score_pos"]))
  y_hat = np.asarray(obj.expected_score(out.score_logits, ids, values))
  tid = np.asarray(obj.target_token_ids_for(rows["target"], ids, values))
  tlp = np.asarray(obj.score_log_prob(out.score_logits, tid))
  reward = np.where(valid, np.asarray(obj.regression_reward(y_hat, rows["target"])), -16.0)
  tlp = np.where(valid, np.maximum(tlp, np.log(1e-8)), np.log(1e-8))
  mask = (valid if invalid == "drop" else np.ones_like(valid)).reshape(-1, n)
  adv = obj.real_advantages(reward.reshape(-1, n), tlp.reshape(-1, n), 1.0, shaping="prob",
                            estimator="rloo", normalize=True, clip=1.0, mask=mask)
  np.testing.assert_allclose(rows["adv"], np.asarray(adv).reshape(-1), atol=1e-5)
  assert np.all(rows["refine_keep"] == valid)
  assert np.all(rows["pg_keep"] == (valid if invalid == "drop" else 1.0))
  # The CoT mask covers exactly the kept generated tokens (delimiter included, no score token).
  lp_w = gen.prompt_tokens.shape[1]
  np.testing.assert_array_equal(rows["cot_mask"][:, lp_w:].sum(1), gen.length)
  np.testing.assert_array_equal(rows["score_pos"], lp_w + gen.length - 1)
  np.testing.assert_array_equal(
      rows["tokens"][valid, rows["score_pos"][valid]], ST.delimiter_ids[-1])

  def hand_loss(p):
    o = score_sequences(graphdef, p, jnp.asarray(rows["tokens"]), jnp.asarray(rows["mask"]),
                        jnp.asarray(rows["score_pos"]))
    pg, _ = obj.policy_gradient_loss(o.token_log_probs, rows["cot_mask"], rows["adv"],
                                     sample_mask=rows["pg_keep"])
    yh = obj.expected_score(o.score_logits, ids, values)
    nll = -obj.score_log_prob(o.score_logits, tid)
    v = jnp.asarray(valid)
    refine = jnp.sum(jnp.where(v, (yh - rows["target"]) ** 2 + lam * nll, 0.0)) / v.sum()
    return pg + beta * refine

  want_loss, want_grad = jax.value_and_grad(hand_loss)(params)
  # On the valid rows alone the same loss is objectives.real_loss itself.
  vrows = {k: v[valid] for k, v in rows.items()}
  o = score_sequences(graphdef, params, jnp.asarray(vrows["tokens"]), jnp.asarray(vrows["mask"]),
                      jnp.asarray(vrows["score_pos"]))
  rl_loss, _ = obj.real_loss(o.token_log_probs, vrows["cot_mask"], vrows["adv"], o.score_logits,
                             vrows["target"], ids, values, beta=beta, lam=lam,
                             target_token_ids=tid[valid])
  pg_v, _ = obj.policy_gradient_loss(o.token_log_probs, vrows["cot_mask"], vrows["adv"])
  yh = obj.expected_score(o.score_logits, ids, values)
  ref_v = jnp.mean((yh - vrows["target"]) ** 2 - lam * obj.score_log_prob(o.score_logits,
                                                                          tid[valid]))
  np.testing.assert_allclose(rl_loss, pg_v + beta * ref_v, rtol=1e-5)

  # The trainer's step (2 micro-batches, SGD lr 1: the update is minus the gradient), with
  # log-probs computed on the response columns only, as run_rl sets it (the response and the
  # free score slot, `build_sequences(extra=1)`).
  width = gen.response.shape[1] + 1
  assert rows["tokens"].shape[1] == lp_w + width
  loss = steps_lib.real_objective(ST, steps_lib.RLLossConfig(beta=beta, lam=lam,
                                                             response_width=width))
  tx = optax.sgd(1.0)
  state, shardings = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
  step = steps_lib.make_train_step(loss, graphdef, tx, mesh, shardings, RLBatch(**rows),
                                   num_micro=2)
  new_state, m = step(state, shd.put_batch(RLBatch(**rows), mesh))
  np.testing.assert_allclose(m["loss"], want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["pg_loss"] + m["refine_loss"], m["loss"], rtol=1e-5, atol=1e-6)
  got_grad = jax.tree.map(lambda a, b: a - b, _host(params), _host(new_state["params"]))
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(_host(want_grad))):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)
  assert float(m["applied"]) == 1.0


def test_token_budget_micro_batches_give_the_fixed_micro_batch_update(real_rows):
  """`rl.token_budget`: the rows sorted by length into micro-batches of different widths and
  row counts (filler rows with zero weight), summed with the full mini-batch's denominators,
  give the update of the fixed 2-micro-batch step (SGD lr 1: the update is minus the gradient;
  REAL with the refinement term and a k3 KL to a perturbed reference)."""
  mesh, graphdef, params, _, rows, gen = real_rows
  rows = dict(rows)
  rng = np.random.default_rng(5)
  rows["ref_lp"] = np.where(rows["cot_mask"] > 0, rows["old_lp"] - 0.3 * rng.random(
      rows["old_lp"].shape), 0.0).astype(np.float32)
  batch = RLBatch(**rows)
  prompt_width = batch.tokens.shape[1] - (gen.response.shape[1] + 1)
  cfg = steps_lib.RLLossConfig(beta=0.7, lam=0.5, kl_coef=0.1,
                               response_width=gen.response.shape[1] + 1)
  loss_for = lambda w: steps_lib.real_objective(ST, dataclasses.replace(
      cfg, response_width=w or cfg.response_width))
  budget = packing.TokenBudget(tokens=3 * (prompt_width + 8), widths=(4, 8), row_multiple=1)
  micro = packing.budget_micro_batches(batch, prompt_width, budget)
  widths = [w for w, _ in micro]
  shapes = {mb.tokens.shape for _, mb in micro}
  assert len(set(widths)) >= 2 and len(shapes) >= 3
  counted = [np.flatnonzero((mb.pg_keep > 0) | (mb.refine_keep > 0)) for _, mb in micro]
  assert sum(len(c) for c in counted) == int(((batch.pg_keep > 0) | (batch.refine_keep > 0)).sum())
  assert any(len(c) < mb.num_rows for c, (_, mb) in zip(counted, micro))  # filler rows
  for w, mb in micro:  # the prompt and response regions cut to the allowed widths
    assert mb.tokens.shape[1] - w in (4, 8, prompt_width) and w in (4, 8, 11)
  assert any(mb.tokens.shape[1] - w < prompt_width for w, mb in micro)
  assert sum(int(mb.cot_mask[c].sum()) for c, (_, mb) in zip(counted, micro)) == int(
      batch.cot_mask[(batch.pg_keep > 0) | (batch.refine_keep > 0)].sum())

  tx = optax.sgd(1.0)
  state, sh = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
  fixed = steps_lib.make_train_step(loss_for(0), graphdef, tx, mesh, sh, batch, num_micro=2)
  want_state, want = fixed(state, shd.put_batch(batch, mesh))
  state, sh = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
  step = steps_lib.AccumulatingStep(loss_for, graphdef, tx, mesh, sh)
  got_state, got = step(state, batch, micro)
  assert step.compiled_shapes == len(shapes)
  for k in ("loss", "pg_loss", "refine_loss", "kl", "mse", "grad_norm", "applied"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(_host(got_state["params"])),
                  jax.tree.leaves(_host(want_state["params"]))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  assert float(got["grad_norm"]) > 0


def test_ppo_kl_entropy_update_equals_hand_computation(real_rows):
  """The PPO-clipped REAL step with a k3 KL penalty and an entropy bonus equals the same loss
  written out by hand: the clipped ratio, the KL estimator and the entropy from full logits are
  computed here independently of real_jax.objectives (2 micro-batches, SGD lr 1)."""
  beta, lam, kl_coef, ent_coef, eps = 0.7, 0.5, 0.3, 0.05, 0.2
  eps_high = 0.28  # rl.clip_eps_high: the asymmetric (clip-higher) range [1 - eps, 1 + eps_high]
  mesh, graphdef, params, _, rows, gen = real_rows
  rows = dict(rows)
  rng = np.random.default_rng(3)
  cot = rows["cot_mask"] > 0
  # Rollout-policy and reference log-probs that differ from the current policy's, so that some
  # ratios leave [1 - eps, 1 + eps] (on both sides) and the KL is not zero.
  cur = np.asarray(score_sequences(graphdef, params, jnp.asarray(rows["tokens"]),
                                   jnp.asarray(rows["mask"]),
                                   jnp.asarray(rows["score_pos"])).token_log_probs)
  rows["old_lp"] = np.where(cot, cur + rng.normal(0, 0.3, cur.shape), 0).astype(np.float32)
  rows["ref_lp"] = np.where(cot, cur + rng.normal(0, 0.5, cur.shape), 0).astype(np.float32)
  ratio = np.exp(cur - rows["old_lp"])[cot]
  assert (ratio > 1 + eps_high).any() and (ratio < 1 - eps).any()
  assert ((ratio > 1 + eps) & (ratio < 1 + eps_high)).any()  # where the two clips differ

  ids, values = jnp.asarray(ST.token_ids), jnp.asarray(ST.values)
  valid = jnp.asarray(gen.found)
  tid = np.asarray(obj.target_token_ids_for(rows["target"], ids, values))
  w_tok = jnp.asarray(cot * rows["pg_keep"][:, None])  # token-mean over the kept CoT tokens

  def hand_loss(p):
    logits = qwen3.forward_logits(graphdef, p, jnp.asarray(rows["tokens"]),
                                  jnp.asarray(rows["mask"]))  # [B,T,V], position t predicts t+1
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.asarray(rows["tokens"])
    lp = jnp.take_along_axis(logp_all[:, :-1], tok[:, 1:, None], axis=-1)[..., 0]
    lp = jnp.pad(lp, ((0, 0), (1, 0)))  # entry t: log pi(tokens[t])
    adv = jnp.asarray(rows["adv"])[:, None]
    r = jnp.exp(lp - rows["old_lp"])
    ppo = -jnp.minimum(r * adv, jnp.clip(r, 1 - eps, 1 + eps_high) * adv)
    pg = jnp.sum(ppo * w_tok) / jnp.sum(w_tok)
    d = rows["ref_lp"] - lp
    kl = jnp.sum((jnp.exp(d) - d - 1) * w_tok) / jnp.sum(w_tok)
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)  # entropy of the next token
    ent = jnp.pad(ent[:, :-1], ((0, 0), (1, 0)))
    entropy = jnp.sum(ent * w_tok) / jnp.sum(w_tok)
    sl = logp_all[jnp.arange(tok.shape[0]), jnp.asarray(rows["score_pos"])][:, ids]
    yh = jnp.sum(jnp.exp(sl) * values, axis=-1)
    nll = -jnp.take_along_axis(logp_all[jnp.arange(tok.shape[0]), jnp.asarray(rows["score_pos"])],
                               jnp.asarray(tid)[:, None], axis=-1)[:, 0]
    refine = jnp.sum(jnp.where(valid, (yh - rows["target"]) ** 2 + lam * nll, 0.0)) / valid.sum()
    return pg + beta * refine + kl_coef * kl - ent_coef * entropy

  want_loss, want_grad = jax.value_and_grad(hand_loss)(params)
  cfg = steps_lib.RLLossConfig(beta=beta, lam=lam, policy_loss="ppo", clip_eps=eps,
                               clip_eps_high=eps_high, kl_coef=kl_coef, kl_estimator="k3",
                               entropy_coef=ent_coef,
                               response_width=gen.response.shape[1] + 1)
  loss = steps_lib.real_objective(ST, cfg)
  tx = optax.sgd(1.0)
  state, shardings = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
  step = steps_lib.make_train_step(loss, graphdef, tx, mesh, shardings, RLBatch(**rows),
                                   num_micro=2)
  new_state, m = step(state, shd.put_batch(RLBatch(**rows), mesh))
  np.testing.assert_allclose(m["loss"], want_loss, rtol=1e-5, atol=1e-6)
  assert float(m["kl"]) > 0 and float(m["entropy"]) > 0
  got_grad = jax.tree.map(lambda a, b: a - b, _host(params), _host(new_state["params"]))
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(_host(want_grad))):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)


def _adamw_rows(real_rows):
  rows = {k: v[:8] for k, v in real_rows[4].items()}  # 8 rows: divides the 2-way batch axis
  # AdamW + clipping, the real optimizer. A large eps keeps the first Adam step (~ lr * sign(g))
  # from amplifying reduction-order noise in near-zero gradients.
  tx = state_lib.make_optimizer(lr=1e-2, steps=10, eps=1e-3)
  loss = steps_lib.real_objective(ST, steps_lib.RLLossConfig(beta=1.0, lam=1.0))
  return rows, tx, loss


def test_sharded_step_equals_single_device(real_rows):
  """The REAL step over a (fsdp 2, tensor 4) mesh of 8 fake devices equals the single-device
  step (SGD with lr 1, so the parameter change is exactly the gradient)."""
  mesh8 = shd.make_mesh({"fsdp": 2, "tensor": 4})
  rows = real_rows[4]  # 12 rows: 6 per micro-batch, divisible by the 2-way batch axis
  loss = steps_lib.real_objective(ST, steps_lib.RLLossConfig(beta=0.7, lam=0.5))
  tx = optax.sgd(1.0)
  results = []
  for mesh in (_mesh1(), mesh8):  # the single-device step is the one compiled above
    graphdef, params = _params(mesh)
    state, sh = state_lib.init_state(params, tx, mesh, 0)
    step = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, RLBatch(**rows), num_micro=2)
    new, m = step(state, shd.put_batch(RLBatch(**rows), mesh))
    if mesh is mesh8:
      leaf = new["params"]["layers"]["q_proj"][...]
      assert leaf.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
      assert len(leaf.sharding.device_set) == 8
    results.append((_host(new["params"]), {k: float(v) for k, v in m.items()}))
  (p1, m1), (p8, m8) = results
  for k in ("loss", "pg_loss", "refine_loss", "grad_norm"):
    assert m1[k] == pytest.approx(m8[k], rel=1e-5, abs=1e-6), k
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _skip_setup(real_rows, **step_kw):
  """(batch rows, state, its host copy, the AdamW REAL step with `step_kw`) on one device."""
  mesh = _mesh1()
  graphdef, params = _params(mesh)
  batch, tx, loss = _adamw_rows(real_rows)
  state, sh = state_lib.init_state(params, tx, mesh, 0)
  step = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, RLBatch(**batch), **step_kw)
  return batch, state, _host(state), step, mesh


def _assert_unchanged(before, state):
  after = _host(state)
  for a, b in zip(jax.tree.leaves(before["params"]) + jax.tree.leaves(before["opt_state"]),
                  jax.tree.leaves(after["params"]) + jax.tree.leaves(after["opt_state"])):
    np.testing.assert_array_equal(a, b)


def test_non_finite_step_is_skipped_and_counted(real_rows):
  batch, state, before, step, mesh = _skip_setup(real_rows, num_micro=2)
  bad = dict(batch, target=np.full_like(batch["target"], np.nan))
  state, m = step(state, shd.put_batch(RLBatch(**bad), mesh))
  assert float(m["applied"]) == 0.0 and int(m["skipped"]) == 1
  _assert_unchanged(before, state)
  state, m = step(state, shd.put_batch(RLBatch(**batch), mesh))  # a good step is applied
  assert float(m["applied"]) == 1.0 and int(m["skipped"]) == 1 and int(state["step"]) == 2


def test_non_finite_update_is_skipped(real_rows):
  """A NaN update (what a NaN learning rate gives): the loss and gradient are finite but the
  update is not. The step is skipped and counted, the parameters and AdamW moments unchanged,
  and the next step applied."""
  batch, state, before, step, mesh = _skip_setup(real_rows, nan_update_at=1)
  state, m = step(state, shd.put_batch(RLBatch(**batch), mesh))
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  assert float(m["applied"]) == 0.0 and int(m["skipped"]) == 1
  _assert_unchanged(before, state)
  state, m = step(state, shd.put_batch(RLBatch(**batch), mesh))
  assert float(m["applied"]) == 1.0 and int(m["skipped"]) == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_host(state)["params"]))


def test_checkpoint_round_trip(tmp_path):
  mesh = shd.make_mesh({"fsdp": 2, "tensor": 4})
  _, params = _params(mesh, seed=3)
  tx = state_lib.make_optimizer(lr=1e-3, steps=10)
  state, sh = state_lib.init_state(params, tx, mesh, 5)
  state["step"] = state["step"] + 7
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
  meta = {"data": {"epoch": 1, "cursor": 96}, "done": False, "best": None}
  ck.save(7, state, meta)
  ck.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  restored, rmeta = ck.restore(ck.latest_step(), abstract, sh)
  assert rmeta == meta
  for a, b in zip(jax.tree.leaves(_host(state)), jax.tree.leaves(_host(restored))):
    np.testing.assert_array_equal(a, b)
  assert (restored["params"]["embedding"][...].sharding.spec
          == state["params"]["embedding"][...].sharding.spec == jax.sharding.PartitionSpec(
              "tensor", "fsdp"))
  p = ck.restore_params(7, abstract["params"], sh["params"])
  for a, b in zip(jax.tree.leaves(_host(state["params"])), jax.tree.leaves(_host(p))):
    np.testing.assert_array_equal(a, b)
  ck.close()


def test_export_to_hf_and_reload_with_transformers(tmp_path):
  import torch  # the test extra's reference implementation
  from transformers import AutoModelForCausalLM
  from real_jax.models.qwen3 import forward_logits
  from real_jax.tools import export_hf as export_tool
  cfg = CFG
  graphdef, params = init_params(cfg, seed=4)
  wd = tmp_path / "run"
  ck = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(str(wd), "sft"), async_save=False)
  ck.save(3, params=params, meta={"done": True})
  ck.close()
  (wd / "run.json").write_text(json.dumps({"model": dataclasses.asdict(cfg), "stages": ["sft"],
                                           "tokenizer": ""}))
  out = tmp_path / "hf"
  assert export_tool.main(["--workdir", str(wd), "--out", str(out)]) == 0
  model = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager")
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 9))
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(forward_logits(graphdef, params, jnp.asarray(tokens, jnp.int32),
                                   jnp.ones(tokens.shape, bool)))
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  assert json.loads((out / "real_jax_export.json").read_text())["step"] == 3


def test_rollout_helpers():
  # build_sequences: prompt ⊕ response, score position = last kept token, padding masked only.
  pt = np.array([[0, 5, 6], [7, 8, 9]], np.int32)
  pm = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
  resp = np.array([[3, 20, 21, 22], [4, 4, 0, 0]], np.int32)
  seqs = readout.build_sequences(pt, pm, resp, np.array([4, 2]), pad_id=0, extra=1)
  assert seqs.tokens.shape == (2, 8)
  np.testing.assert_array_equal(seqs.score_pos, [6, 4])
  np.testing.assert_array_equal(seqs.mask[0], [0, 1, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(seqs.cot_mask[1], [0, 0, 0, 1, 1, 0, 0, 0])
  # Samples.concatenate: the chunks of a rollout (rl.sample_prompts) in order, prompts
  # left-widened to the widest chunk's bucket (pad_id under the new padding, mask 0).
  def part(width, first):
    rows = 2
    return readout.Samples(
        prompt_tokens=np.full((rows, width), first, np.int32),
        prompt_mask=np.ones((rows, width), np.int32), response=np.full((rows, 3), first, np.int32),
        length=np.full(rows, first, np.int32), found=np.array([True, False]),
        eos=np.array([False, True]), truncated=np.zeros(rows, bool))
  both = readout.Samples.concatenate([part(2, 1), part(4, 2)], pad_id=9)
  np.testing.assert_array_equal(both.prompt_tokens, [[9, 9, 1, 1]] * 2 + [[2, 2, 2, 2]] * 2)
  np.testing.assert_array_equal(both.prompt_mask, [[0, 0, 1, 1]] * 2 + [[1, 1, 1, 1]] * 2)
  np.testing.assert_array_equal(both.length, [1, 1, 2, 2])
  np.testing.assert_array_equal(both.found, [True, False, True, False])
  assert both.response.shape == (4, 3) and both.eos.tolist() == [False, True, False, True]
  # Reading.cot_tokens: the sampled CoT up to its length; none for the direct readout.
  z = np.zeros(2, np.float32)
  reading = readout.Reading(rail=z, y_hat=z, score_probs=np.zeros((2, 5)), score_mass=z,
                            standard=z, standard_valid=z > 0, valid=z > 0, status=z.astype(int),
                            length=np.array([3, 1]), cot_length=np.array([2, 1]), response=resp)
  assert reading.cot_tokens(0) == [3, 20] and reading.cot_tokens(1) == [4]
  assert dataclasses.replace(reading, response=None).cot_tokens(0) == []
  # group filter
  b = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32)
  np.testing.assert_array_equal(rl.group_filter(b, "partial"), [True, False, False])
  np.testing.assert_array_equal(rl.group_filter(b, "not_all_correct"), [True, False, True])
  np.testing.assert_array_equal(rl.group_filter(b, "not_all_wrong"), [True, True, False])
  np.testing.assert_array_equal(rl.group_filter(b, "all"), [True, True, True])


def test_sample_cots_marks_delimiter_eos_and_truncation():
  mesh = _mesh1()
  graphdef, params = _params(mesh)
  rng = np.random.default_rng(5)
  pt = rng.integers(30, 256, size=(2, 8)).astype(np.int32)
  pm = np.ones((2, 8), np.int32)
  settings = readout.SamplerSettings(max_new_tokens=6, temperature=1.0, top_p=1.0)
  key = jax.random.PRNGKey(0)
  first = readout.sample_cots(graphdef, params, pt, pm, key, settings, ST, num_samples=3,
                              mesh=mesh, pad_id=PAD)
  # Random weights never sample the 3-token delimiter; make the delimiter two tokens that a
  # truncated row drew at steps 2-3. The same key draws the same tokens up to the stop, so that
  # row now stops there, found.
  r0 = int(np.nonzero(first.truncated)[0][0])
  delim = tuple(int(t) for t in first.response[r0, 1:3])
  st = dataclasses.replace(ST, delimiter_ids=delim)
  g = readout.sample_cots(graphdef, params, pt, pm, key, settings, st, num_samples=3, mesh=mesh,
                          pad_id=PAD)
  assert g.response.shape == (6, 6)
  assert np.all(g.found + g.eos + g.truncated == 1)
  assert g.found[r0] and g.length[r0] <= 3
  for r in range(6):
    L = g.length[r]
    assert np.all(g.response[r, L:] == PAD)
    np.testing.assert_array_equal(g.response[r, :L], first.response[r, :L])  # same draws
    if g.found[r]:
      assert tuple(g.response[r, L - 2:L]) == delim
      assert delim not in {tuple(g.response[r, i:i + 2]) for i in range(L - 2)}  # the first
    if g.truncated[r]:
      assert L == 6
    if g.eos[r]:
      assert g.response[r, L - 1] == ST.eos_id
  np.testing.assert_array_equal(g.prompt_tokens[::3, -8:], pt)  # left-padded to a bucket


def test_advantages_for_invalid_rows():
  """Rows without the delimiter: "penalize" keeps them in the PG term with the format penalty
  (and pi(y*) = 0), "drop" removes them from both terms and from the group baselines."""
  y_hat = np.array([3.0, 4.0, 0.0, 2.0, 5.0, 5.0, 1.0, 0.0], np.float32)
  target = np.array([4.0] * 4 + [5.0] * 4, np.float32)
  tlp = np.log(np.array([0.5, 0.6, 1.0, 0.1, 0.9, 0.8, 0.1, 1.0], np.float32))
  valid = np.array([1, 1, 0, 1, 1, 1, 1, 0], bool)
  binary = np.zeros(8, np.float32)
  s = rl.AdvantageSettings(invalid="penalize", format_penalty=16.0, shaping="none",
                           recipe=obj.AdvantageRecipe("rloo", normalize=False, clip=None))
  out = rl.compute_advantages(y_hat, tlp, target, binary, valid, 4, s)
  r = np.where(valid, -(y_hat - target) ** 2, -16.0).reshape(2, 4)
  want = r - (r.sum(1, keepdims=True) - r) / 3  # RLOO
  np.testing.assert_allclose(out.advantage, want.reshape(-1), atol=1e-6)
  np.testing.assert_array_equal(out.pg_keep, 1.0)
  np.testing.assert_array_equal(out.refine_keep, valid)
  out = rl.compute_advantages(y_hat, tlp, target, binary, valid, 4,
                                   dataclasses.replace(s, invalid="drop"))
  np.testing.assert_array_equal(out.pg_keep, valid)
  assert out.advantage[2] == 0.0 and out.advantage[7] == 0.0
  g0 = r[0, [0, 1, 3]]
  np.testing.assert_allclose(out.advantage[[0, 1, 3]], g0 - (g0.sum() - g0) / 2, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The exact estimator through the trainer: every group of a tiny model's rollouts, enumerated


EX_CFG = CFG.replace(vocab_size=7, num_layers=1, hidden_size=32, intermediate_size=64,
                     num_heads=4, num_kv_heads=2, head_dim=8, initializer_range=0.6)
# Mistral-style: pad = eos = 0; the delimiter is one token (1); scores 1..5 are tokens 2..6.
EX_ST = ScoreTokens(token_ids=(2, 3, 4, 5, 6), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                    delimiter_ids=(1,), eos_id=0)
EX_R = 3  # rl.max_response_len


def _every_cot(vocab, stops, r):
  """Every response the sampler can return: stopped at the first stop token, or truncated."""
  out = []
  def grow(prefix):
    for t in range(vocab):
      c = prefix + (t,)
      if t in stops or len(c) == r:
        out.append(c)
      else:
        grow(c)
  grow(())
  return out


def _enumerated_rollout(n):
  """The one prompt (left-padded) with every group of n CoTs, in `sample_cots`' format."""
  cots = _every_cot(EX_CFG.vocab_size, (EX_ST.eos_id, EX_ST.delimiter_ids[0]), EX_R)
  groups = np.stack(np.meshgrid(*[np.arange(len(cots))] * n, indexing="ij"), -1).reshape(-1, n)
  prompt = np.array([[0, 0, 4, 6, 3]], np.int32)  # 2 pad slots, then 3 prompt tokens
  pmask = (prompt > 0).astype(np.int32)
  resp = np.zeros((len(cots), EX_R), np.int32)
  for i, c in enumerate(cots):
    resp[i, :len(c)] = c
  length = np.array([len(c) for c in cots], np.int32)
  last = resp[np.arange(len(cots)), length - 1]
  found = last == EX_ST.delimiter_ids[0]
  eos = last == EX_ST.eos_id
  flat = groups.reshape(-1)
  gen = readout.Samples(prompt_tokens=np.repeat(prompt, len(flat), 0),
                        prompt_mask=np.repeat(pmask, len(flat), 0), response=resp[flat],
                        length=length[flat], found=found[flat], eos=eos[flat],
                        truncated=(~found & ~eos)[flat])
  g = len(groups)
  prompts = {"prompt_tokens": np.repeat(prompt, g, 0), "prompt_mask": np.repeat(pmask, g, 0),
             "target": np.full((g,), 4.0, np.float32), "target_int": np.full((g,), 4, np.int32)}
  uniq = {"prompt_tokens": np.repeat(prompt, len(cots), 0),
          "prompt_mask": np.repeat(pmask, len(cots), 0), "response": resp, "length": length,
          "found": found, "eos": eos}
  return gen, prompts, uniq, groups


def _exact_minus_grad_J(graphdef, params, uniq, lam, penalty):
  """-grad J, J = sum_c pi(c|x) r(c) over every response c (the objective itself)."""
  seqs = readout.build_sequences(uniq["prompt_tokens"], uniq["prompt_mask"], uniq["response"],
                                 uniq["length"], pad_id=0, extra=1)
  ids, values = jnp.asarray(EX_ST.token_ids), jnp.asarray(EX_ST.values)
  tid = jnp.full((len(uniq["length"]),), EX_ST.token_ids[3], jnp.int32)  # y* = 4
  valid = jnp.asarray(uniq["found"])

  def J(p):
    o = score_sequences(graphdef, p, jnp.asarray(seqs.tokens), jnp.asarray(seqs.mask),
                        jnp.asarray(seqs.score_pos))
    log_pi = jnp.sum(o.token_log_probs * seqs.cot_mask, axis=1)
    y_hat = obj.expected_score(o.score_logits, ids, values)
    logp_y = jnp.maximum(obj.score_log_prob(o.score_logits, tid), rl.LOG_PROB_FLOOR)
    r = jnp.where(valid, -(y_hat - 4.0) ** 2 + lam * logp_y,
                  -penalty + lam * rl.LOG_PROB_FLOOR)
    return jnp.sum(jnp.exp(log_pi) * r), jnp.sum(jnp.exp(log_pi))

  (_, total), g = jax.value_and_grad(J, has_aux=True)(params)
  np.testing.assert_allclose(float(total), 1.0, rtol=1e-5)  # every response enumerated
  return jax.tree.map(jnp.negative, g)


def _trainer_expected_grad(graphdef, params, rows, n, loss, chunk=4096):
  """sum over groups of P(group) x grad of the trainer's loss on that group (its own
  denominators, as one mini-batch of n rows); P from the rollout's own log-probs."""
  log_pi = (rows["old_lp"] * rows["cot_mask"]).sum(1).reshape(-1, n)
  w_all = np.exp(log_pi.astype(np.float64).sum(1))
  np.testing.assert_allclose(w_all.sum(), 1.0, rtol=1e-5)  # every group enumerated
  g_rows = {k: v.reshape((-1, n) + v.shape[1:]) for k, v in rows.items()}

  @jax.jit
  def chunk_grad(p, mb, w):
    def total(p):
      per = jax.vmap(lambda b: loss.fn(graphdef, p, RLBatch(**b),
                                       loss.denominators(RLBatch(**b)))[0])(mb)
      return jnp.sum(w * per)
    return jax.grad(total)(p)

  acc = None
  G = len(w_all)
  for s in range(0, G, chunk):
    sl = slice(s, min(s + chunk, G))
    mb = {k: v[sl] for k, v in g_rows.items()}
    w = w_all[sl].astype(np.float32)
    if len(w) < chunk:  # static shapes: pad with zero-weight copies
      pad = chunk - len(w)
      mb = {k: np.concatenate([v, np.repeat(v[:1], pad, 0)]) for k, v in mb.items()}
      w = np.concatenate([w, np.zeros(pad, np.float32)])
    g = _host(chunk_grad(params, mb, w))
    acc = g if acc is None else jax.tree.map(np.add, acc, g)
  return acc


def _flat_tree(t):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])


@pytest.fixture(scope="module")
def enumerated():
  mesh = _mesh1()
  graphdef, params = init_params(EX_CFG, mesh=mesh, seed=3)
  n, lam, penalty = 2, 0.5, 16.0
  gen, prompts, uniq, groups = _enumerated_rollout(n)
  c = _rl_config(group_size=n, filter="all", max_response_len=EX_R, score_batch_size=8192)
  adv = rl.AdvantageSettings(reward="regression", shaping="log_prob", shaping_weight=lam,
                             recipe=obj.AdvantageRecipe("rloo", normalize=False, clip=None),
                             invalid="penalize", format_penalty=penalty)
  score_fn = readout.make_score_fn(graphdef, EX_ST, mesh)
  rows, keep_g, _ = _round(c, "real", mesh, graphdef, params, prompts, score_fn, adv, gen,
                           score_tokens=EX_ST, pad_id=0)
  assert keep_g.all() and len(rows["adv"]) == groups.size
  target = _flat_tree(_exact_minus_grad_J(graphdef, params, uniq, lam, penalty))
  return dict(graphdef=graphdef, params=params, rows=rows, n=n, lam=lam, target=target,
              uniq=uniq)


def _rel_err(got, target):
  return float(np.abs(got - target).max() / np.abs(target).max())


def test_trainer_real_step_is_exact_for_enumerated_rollouts(enumerated):
  """Through the trainer: rollouts packed by `rl.rollout_round` (prompt with left padding,
  responses of lengths 1-3 right-padded, rows stopped at the delimiter, at EOS and truncated),
  advantages from `rl.compute_advantages`, loss `steps.real_objective` with its own
  denominators. Over every group of n = 2 of a 1-layer model's 187 possible responses (34,969
  groups), E[grad loss] = -grad J with aggregation="sequence-sum"; token-mean is not."""
  e = enumerated
  lengths = e["uniq"]["length"]
  assert set(lengths) == {1, 2, 3} and e["uniq"]["found"].any() and e["uniq"]["eos"].any()
  assert (~e["uniq"]["found"] & ~e["uniq"]["eos"]).any()  # truncated responses too
  assert (e["rows"]["mask"][:, 0] == 0).all()  # left padding inside the packed rows
  cfg = steps_lib.RLLossConfig(beta=1.0, lam=e["lam"], aggregation="sequence-sum")
  got = _flat_tree(_trainer_expected_grad(e["graphdef"], e["params"], e["rows"], e["n"],
                                          steps_lib.real_objective(EX_ST, cfg)))
  assert np.abs(e["target"]).max() > 1e-3
  assert _rel_err(got, e["target"]) < 2e-4, _rel_err(got, e["target"])
  tm = steps_lib.RLLossConfig(beta=1.0, lam=e["lam"], aggregation="token-mean")
  got_tm = _flat_tree(_trainer_expected_grad(e["graphdef"], e["params"], e["rows"], e["n"],
                                             steps_lib.real_objective(EX_ST, tm)))
  assert _rel_err(got_tm, e["target"]) > 0.05


def test_trainer_exactness_mutations_fail(enumerated, monkeypatch):
  """Mutations of the trainer's path that the enumeration must catch: the score token inside
  the policy-gradient mask (the authors' ground-truth splice), and a refinement term averaged
  over the valid rows only. The advantages reach the trainer as host arrays from the no-grad
  scoring pass, so removing the loss's stop_gradient on them cannot change the trainer's
  gradient (checked below); that mutation is caught where a gradient path exists, in
  tests/test_objectives.py (advantages computed in the same forward)."""
  e = enumerated
  monkeypatch.setattr(obj, "_broadcast_adv", lambda a, lp: (
      jnp.asarray(a)[..., None] if jnp.ndim(a) == lp.ndim - 1 else jnp.asarray(a)))
  jax.clear_caches()  # re-trace the jitted losses with the mutation
  try:
    cfg0 = steps_lib.RLLossConfig(beta=1.0, lam=e["lam"], aggregation="sequence-sum")
    got = _flat_tree(_trainer_expected_grad(e["graphdef"], e["params"], e["rows"], e["n"],
                                            steps_lib.real_objective(EX_ST, cfg0)))
    assert _rel_err(got, e["target"]) < 2e-4  # structurally immune: A is data here
  finally:
    monkeypatch.undo()
    jax.clear_caches()
  cfg = steps_lib.RLLossConfig(beta=1.0, lam=e["lam"], aggregation="sequence-sum")
  loss = steps_lib.real_objective(EX_ST, cfg)
  rows = dict(e["rows"])
  pos = rows["score_pos"] + 1
  r_idx = np.arange(len(pos))
  for k in ("tokens", "mask", "cot_mask"):
    rows[k] = rows[k].copy()
  rows["tokens"][r_idx, pos] = rows["target_id"]
  rows["mask"][r_idx, pos] = True
  rows["cot_mask"][r_idx, pos] = 1.0
  got = _flat_tree(_trainer_expected_grad(e["graphdef"], e["params"], rows, e["n"], loss))
  assert _rel_err(got, e["target"]) > 0.05

  base = loss.denominators
  valid_only = steps_lib.Loss(lambda b: base(b)._replace(refine=jnp.sum(b.refine_keep)),
                              loss.fn, "real")
  got = _flat_tree(_trainer_expected_grad(e["graphdef"], e["params"], e["rows"], e["n"],
                                          valid_only))
  assert _rel_err(got, e["target"]) > 0.05


# ---------------------------------------------------------------------------------------------
# Standard RL = GRPO as published; REAL keeps the score token out of the policy


def test_grpo_recipe_is_the_standard_one():
  """One correct sample in 16: GRPO (group mean, / sample std + 1e-6, no clip) gives it 3.75 and
  the others -0.25 (the group sums to 0); the authors' recipe clips it to 1 (sum -2.87)."""
  r = np.zeros((1, 16), np.float32)
  r[0, 3] = 1.0
  g = rl.AdvantageSettings.from_recipe("grpo", reward="binary")
  a = rl.compute_advantages(np.zeros(16), np.zeros(16), np.zeros(16), r[0],
                                 np.ones(16, bool), 16, g).advantage
  np.testing.assert_allclose(a[3], 3.75, rtol=1e-5)
  np.testing.assert_allclose(np.delete(a, 3), -0.25, rtol=1e-5)
  np.testing.assert_allclose(a.sum(), 0.0, atol=1e-5)
  import torch  # the reference: verl computes GRPO advantages with torch.std (unbiased)
  t = torch.tensor(r[0])
  np.testing.assert_allclose(a, ((t - t.mean()) / (t.std() + 1e-6)).numpy(), rtol=1e-5)  # verl
  au = rl.AdvantageSettings.from_recipe("authors", reward="binary")
  b = rl.compute_advantages(np.zeros(16), np.zeros(16), np.zeros(16), r[0],
                                 np.ones(16, bool), 16, au).advantage
  np.testing.assert_allclose(b[3], 1.0)
  np.testing.assert_allclose(b.sum(), 1.0 - 15 * 0.2582, atol=1e-3)


def test_rl_settings_resolve_per_method():
  c = config_lib.base_config()
  vals = (1.0, 2.0, 3.0, 4.0, 5.0)
  real = _rl_settings(c, "real")
  assert (real.recipe_name, real.policy_loss, real.advantages.recipe.clip,
          real.advantages.recipe.ddof) == ("authors", "reinforce", 1.0, 0)
  # the worst squared error with the full-vocabulary y_hat
  assert real.advantages.format_penalty == 25.0
  grpo = _rl_settings(c, "grpo")
  r = grpo.advantages.recipe
  assert (grpo.recipe_name, r.estimator, grpo.policy_loss, r.clip, r.ddof, r.eps,
          grpo.advantages.reward) == ("grpo", "grpo", "ppo", None, 1, 1e-6, "binary")
  assert "group-mean baseline" in grpo.label and "ppo" in grpo.label
  assert rl.loss_config(c, grpo).clip_eps_high is None  # symmetric by default
  c.rl.clip_eps_high = 0.28
  assert rl.loss_config(c, grpo).clip_eps_high == 0.28
  assert "clip ε=[1-0.2, 1+0.28]" in _rl_settings(c, "grpo").label
  c.rl.clip_eps_high = 0.0
  c.rl.advantage = "authors"  # the authors' binary-RLOO ablation, by name
  assert "leave-one-out" in _rl_settings(c, "grpo").label
  c.rl.renormalize = True
  assert _rl_settings(c, "real").advantages.format_penalty == 16.0
  c.rl.format_penalty = 3.0
  assert _rl_settings(c, "real").advantages.format_penalty == 3.0
  assert obj.worst_squared_error(vals) == 25.0
  c = config_lib.base_config()
  c.rl.clip = 0.0
  with pytest.raises(config_lib.ConfigError, match="rl.advantage=custom"):
    config_lib.validate(c, 8)
  c.rl.advantage = "custom"
  config_lib.validate(c, 8)
  assert _rl_settings(c, "real").advantages.recipe.clip is None


def test_grpo_rows_train_the_sampled_score_token_real_rows_do_not():
  """GRPO's action includes the sampled score token (it is in the reward); REAL's CoT term
  stops at the delimiter and the score token gets the refinement term only."""
  mesh = _mesh1()
  graphdef, params = _params(mesh)
  c = _rl_config()
  gen, batch = _crafted_rollout(np.random.default_rng(1))
  score_fn = readout.make_score_fn(graphdef, ST, mesh)
  out = {}
  for method in ("grpo", "real"):
    adv = rl.AdvantageSettings.from_recipe(
        "grpo" if method == "grpo" else "authors",
        reward="binary" if method == "grpo" else "regression")
    out[method] = _round(c, method, mesh, graphdef, params, batch, score_fn, adv, gen)[0]
  valid = gen.found
  after = out["real"]["score_pos"] + 1
  rows = np.arange(len(after))
  np.testing.assert_array_equal(out["real"]["cot_mask"][rows, after], 0.0)
  np.testing.assert_array_equal(out["grpo"]["cot_mask"][rows, after], valid.astype(np.float32))
  g_tok = out["grpo"]["tokens"][rows, after]
  assert (g_tok[~valid] == PAD).all()
  # With a greedy draw at the score position, the appended token is the argmax there.
  adv = rl.AdvantageSettings.from_recipe("grpo", reward="binary")
  greedy = _round(c, "grpo", mesh, graphdef, params, batch,
                  readout.make_score_fn(graphdef, ST, mesh, greedy=True), adv, gen)[0]
  o = score_sequences(graphdef, params, jnp.asarray(greedy["tokens"]),
                      jnp.asarray(greedy["mask"]), jnp.asarray(greedy["score_pos"]))
  np.testing.assert_array_equal(greedy["tokens"][rows, after][valid],
                                np.argmax(np.asarray(o.score_logits), -1)[valid])
  # the old log-prob at that slot is the policy's own log-prob of the sampled token
  o = score_sequences(graphdef, params, jnp.asarray(out["grpo"]["tokens"]),
                      jnp.asarray(out["grpo"]["mask"]), jnp.asarray(out["grpo"]["score_pos"]))
  lp = np.asarray(o.token_log_probs)[rows, after]
  np.testing.assert_allclose(out["grpo"]["old_lp"][rows, after][valid], lp[valid], atol=1e-5)
  np.testing.assert_array_equal(out["grpo"]["cot_mask"].sum(1) - out["real"]["cot_mask"].sum(1),
                                valid.astype(np.float32))
