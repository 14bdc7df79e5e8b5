"""Tests for real_jax.objectives: hand-computed values, gradients, unbiasedness, sharding."""

import functools
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from real_jax import objectives as obj
from real_jax import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
IDS = np.array([1, 2, 3])        # score tokens in a 4-token vocabulary
VALS = np.array([1.0, 2.0, 3.0])
PROBS = np.array([0.1, 0.2, 0.3, 0.4])


def _close(a, b, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------


def test_import_is_light():
  code = ("import sys, real_jax.objectives; "
          "bad = [m for m in ('transformers', 'tensorflow', 'torch', 'orbax') "
          "if m in sys.modules]; assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_expected_score_hand_values():
  logits = np.log(np.array(PROBS))
  # full vocabulary: 1*.2 + 2*.3 + 3*.4; renormalised: divide by the score mass .9
  _close(obj.expected_score(logits, IDS, VALS), 2.0)
  _close(obj.expected_score(logits, IDS, VALS, renormalize=True), 2.0 / 0.9)
  # temperature 2: p ∝ sqrt(p)
  q = np.sqrt(PROBS) / np.sqrt(PROBS).sum()
  _close(obj.expected_score(logits, IDS, VALS, temperature=2.0), q[1] + 2 * q[2] + 3 * q[3])
  _close(obj.score_token_mass(logits, IDS), 0.9)
  # leading dims
  stacked = np.stack([logits, np.log(np.array([0.7, 0.1, 0.1, 0.1]))])[None]
  _close(obj.expected_score(stacked, IDS, VALS), [[2.0, 0.6]])
  _close(obj.score_token_log_probs(logits, IDS, renormalize=True), np.log(PROBS[1:] / 0.9))


def test_expected_score_bf16_is_computed_in_float32():
  logits = np.array([3.0, 0.25, 5.125, 5.0], jnp.bfloat16)
  out = obj.expected_score(logits, IDS, VALS)
  assert out.dtype == jnp.float32
  p = np.exp(np.float64([3.0, 0.25, 5.125, 5.0]))
  p /= p.sum()
  _close(out, p[1] + 2 * p[2] + 3 * p[3], rtol=1e-6)
  # log-probs stay finite where log(softmax) underflows
  big = np.array([0.0, -200.0, 0.0, 0.0])
  _close(obj.score_log_prob(big, np.array(1)), -200.0 - np.log(3.0))


def test_score_log_prob_and_targets():
  logits = np.log(np.array([PROBS, PROBS[::-1]]))
  _close(obj.score_log_prob(logits, np.array([3, 0])), np.log([0.4, 0.4]))
  _close(obj.score_log_prob(logits, np.array([2, 2]), temperature=0.5),
         np.log([0.09 / 0.3, 0.04 / 0.3]))  # p^2 / sum p^2 = .3
  ids = np.array([16, 17, 18, 19, 20])
  got = obj.target_token_ids_for(np.array([1.0, 5.0, 3.4, 3.5, 0.0]), ids, np.arange(1.0, 6.0))
  np.testing.assert_array_equal(got, [16, 20, 18, 18, 16])


def test_rewards():
  _close(obj.regression_reward(np.array([2.5, 4.0]), np.array([4.0, 4.0])), [-2.25, 0.0])
  _close(obj.binary_reward(np.array([3, 4, 5, -1]), np.array([3.0, 3.0, 5.0, 2.0])),
         [1, 0, 1, 0])


def test_group_advantages_hand_values():
  r = np.array([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
  raw = dict(normalize=False, clip=None)
  _close(obj.group_advantages(r, estimator="rloo", **raw)[0], [-8 / 3, -4 / 3, 0, 4], atol=1e-5)
  _close(obj.group_advantages(r, estimator="grpo", **raw)[0], [-2, -1, 0, 3])
  _close(obj.group_advantages(r, estimator="none", **raw), r)
  z = np.array([-2, -1, 0, 3]) / np.sqrt(3.5)  # population std of [-2, -1, 0, 3]
  for est in ("rloo", "grpo"):
    _close(obj.group_advantages(r, estimator=est, clip=None)[0], z, atol=1e-5)
    _close(obj.group_advantages(r, estimator=est)[0], np.clip(z, -1, 1), atol=1e-5)
    _close(obj.group_advantages(r, estimator=est)[1], 0.0)  # constant group: no signal, no NaN
  _close(obj.group_advantages(r, estimator="grpo", clip=0.5)[0], np.clip(z, -.5, .5), atol=1e-5)
  # eps lands on the std: A / (std + eps)
  _close(obj.group_advantages(r, estimator="grpo", clip=None, eps=1.0)[0],
         np.array([-2, -1, 0, 3]) / (np.sqrt(3.5) + 1.0), atol=1e-6)
  with pytest.raises(ValueError, match="rloo"):
    obj.group_advantages(r, estimator="nope")


def test_group_advantages_mask():
  r = np.array([[1.0, 2.0, 3.0, 100.0], [7.0, 0.0, 0.0, 0.0]])
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
  out = obj.group_advantages(r, mask=mask, normalize=False, clip=None)
  _close(out, [[-1.5, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, 0.0]])  # singleton group: no peers
  grpo = obj.group_advantages(r, mask=mask, estimator="grpo", clip=None)
  _close(grpo[0], [-np.sqrt(1.5), 0, np.sqrt(1.5), 0], atol=1e-5)


def _authors_advantages(E, log_p, y, beta_supp=1.0):
  """Independent numpy transcription of the authors' Stage 2 (docs/architecture.md, A4)."""
  def loo_norm_clip(r):
    n = r.shape[-1]
    a = r - (r.sum(-1, keepdims=True) - r) / (n - 1)
    a = a / (a.std(-1, keepdims=True) + 1e-8)  # numpy std: population (ddof=0), like torch's
    return np.clip(a, -1.0, 1.0)
  return loo_norm_clip(-(E - y) ** 2) + beta_supp * loo_norm_clip(np.exp(log_p))


def test_real_advantages_authors_recipe_by_hand():
  E = np.array([[2.0, 3.0, 3.5, 4.5]])
  p = np.array([[0.2, 0.5, 0.4, 0.1]])
  reg = obj.regression_reward(E, 3.0)
  got = obj.real_advantages(reg, np.log(p), 1.0)
  # by hand: z(reg) = [-1/7, 1, 5/7, -11/7] -> clip; z(p) = [-.1,.2,.1,-.2]/sqrt(.025) -> clip
  s = np.sqrt(0.025)
  hand = np.array([-1 / 7, 1.0, 5 / 7, -1.0]) + np.array([-0.1 / s, 1.0, 0.1 / s, -1.0])
  _close(got[0], hand, atol=1e-5)
  _close(got[0], _authors_advantages(E, np.log(p), 3.0)[0], atol=1e-5)
  _close(obj.real_advantages(reg, np.log(p), 0.5), _authors_advantages(E, np.log(p), 3.0, 0.5),
         atol=1e-5)
  # switches: regression only; log-probability shaping
  _close(obj.real_advantages(reg, np.log(p), 1.0, shaping="none"), [[-1 / 7, 1, 5 / 7, -1]],
         atol=1e-5)
  lp = np.log(p[0])
  z_lp = np.clip((lp - lp.mean()) / lp.std(), -1, 1)
  _close(obj.real_advantages(reg, np.log(p), 2.0, shaping="log_prob")[0],
         np.array([-1 / 7, 1, 5 / 7, -1]) + 2 * z_lp, atol=1e-5)


def test_real_advantages_random_groups_match_authors():
  rng = np.random.default_rng(0)
  E = rng.uniform(0, 5, (6, 16))
  y = rng.integers(1, 6, (6, 1)).astype(float)
  lp = np.log(rng.uniform(0.01, 1, (6, 16)))
  _close(obj.real_advantages(obj.regression_reward(E, y), lp, 1.0), _authors_advantages(E, lp, y),
         atol=1e-4)


def test_partial_group_mask():
  b = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 1]])
  np.testing.assert_array_equal(obj.partial_group_mask(b), [False, False, True, True])
  np.testing.assert_array_equal(
      obj.partial_group_mask(b, mask=np.array([[1] * 3, [1] * 3, [1, 0, 0], [1] * 3])),
      [False, False, False, True])


# A tiny batch used by several tests: B = 2, T = 3, V = 4.
LP = np.array([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
MASK = np.array([[1, 1, 0], [1, 0, 0]])
ADV = np.array([2.0, -1.0])
SCORE_LOGITS = np.log(np.array([PROBS, PROBS]))
TARGETS = np.array([2.0, 3.0])  # y_hat = 2 for both rows -> squared errors 0 and 1


def test_real_loss_hand_values():
  nll = -(np.log(0.3) + np.log(0.4)) / 2  # targets 2, 3 -> tokens 2, 3
  pg_tok = (2.0 + 4.0 - 0.5) / 3          # -lp * A over the 3 CoT tokens
  pg_seq = ((2.0 + 4.0) / 2 - 0.5) / 2    # mean of per-sequence means
  pg_sum = (2.0 + 4.0 - 0.5) / 2          # mean over sequences of per-sequence sums (exact form)
  ones = np.ones(2)
  for agg, pg in (("token-mean", pg_tok), ("sequence-mean", pg_seq), ("sequence-sum", pg_sum)):
    loss, m = obj.real_loss(LP, MASK, ADV, SCORE_LOGITS, TARGETS, IDS, VALS, beta=0.5, lam=2.0,
                            aggregation=agg, sample_mask=ones)
    _close(loss, pg + 0.5 * (0.5 + 2.0 * nll))
    _close(m["pg_loss"], pg)
    _close(m["refine_loss"], 0.5 * (0.5 + 2.0 * nll))
    _close(m["mse"], 0.5)
    _close(m["nll"], nll)
    _close(m["expected_score"], 2.0)
    _close(m["advantage"], 0.5)
    _close(m["score_mass"], 0.9)
    _close(m["target_prob"], 0.35)
    _close(m["loss"], loss)
  # beta = 0: CoT term only; renormalize changes y_hat = 2/.9 and so the MSE
  loss, m = obj.real_loss(LP, MASK, ADV, SCORE_LOGITS, TARGETS, IDS, VALS, beta=1.0, lam=0.0,
                          renormalize=True)
  y = 2.0 / 0.9
  _close(m["mse"], ((y - 2) ** 2 + (y - 3) ** 2) / 2)
  _close(loss, pg_tok + m["mse"])
  # sample_mask drops row 1 from both terms
  loss, m = obj.real_loss(LP, MASK, ADV, SCORE_LOGITS, TARGETS, IDS, VALS, beta=1.0, lam=0.0,
                          sample_mask=np.array([1.0, 0.0]))
  _close(loss, 3.0 + 0.0)


def test_real_loss_gradients_by_hand():
  """Masked garbage does not leak, advantages are constants, d/dlp = -A m / N."""
  lp = LP.copy()
  lp[:, 2] = -np.inf  # padding log-probs may be -inf
  f = lambda x, a: obj.real_loss(x, MASK, a, SCORE_LOGITS, TARGETS, IDS, VALS, beta=1.0,
                                 lam=1.0)[0]
  loss = f(lp, ADV)
  g_lp, g_adv = jax.grad(f, argnums=(0, 1))(lp, ADV)
  assert np.isfinite(loss) and np.all(np.isfinite(g_lp))
  _close(g_lp, [[-2 / 3, -2 / 3, 0], [1 / 3, 0, 0]])  # d/dlp of -lp*A/3
  _close(g_adv, 0.0)


def test_baseline_losses_hand_values():
  loss, m = obj.sft_loss(LP, MASK)
  _close(loss, 3.5 / 3)
  _close(obj.sft_loss(LP, MASK, aggregation="sequence-mean")[0], (1.5 + 0.5) / 2)
  _close(m["num_tokens"], 3)
  loss, m = obj.raft_loss(SCORE_LOGITS, TARGETS, IDS, VALS)
  _close(loss, 0.5)
  _close(m["expected_score"], 2.0)
  loss, m = obj.cot_raft_loss(LP, MASK, SCORE_LOGITS, TARGETS, IDS, VALS, lam=3.0)
  _close(loss, 3.5 / 3 + 3.0 * 0.5)
  _close(m["ce"], 3.5 / 3)


def test_policy_gradient_loss_hand_values():
  loss, _ = obj.policy_gradient_loss(LP, MASK, ADV)
  _close(loss, 5.5 / 3)
  old = np.zeros((2, 3))
  lp = np.log(np.array([[1.5, 0.9, 1.0], [0.5, 1.0, 1.0]]))
  # ratios 1.5, 0.9 (A=+2) and 0.5 (A=-1); eps = 0.2
  # A>0: max(-1.5*2, -1.2*2) = -2.4 (clipped), max(-0.9*2, -0.9*2) = -1.8
  # A<0: max(0.5, 0.8) = 0.8 (clipped)
  loss, m = obj.policy_gradient_loss(lp, MASK, ADV, old_log_probs=old)
  _close(loss, (-2.4 - 1.8 + 0.8) / 3)
  _close(m["clip_frac"], 2 / 3)
  loss, _ = obj.policy_gradient_loss(lp, MASK, ADV, old_log_probs=old, clip_eps_high=0.6)
  _close(loss, (-3.0 - 1.8 + 0.8) / 3)
  # PPO against itself: value -A, gradient identical to REINFORCE
  f_ppo = lambda x: obj.policy_gradient_loss(x, MASK, ADV, policy_loss="ppo")[0]
  f_rf = lambda x: obj.policy_gradient_loss(x, MASK, ADV)[0]
  _close(f_ppo(LP), -(2 + 2 - 1) / 3)
  _close(jax.grad(f_ppo)(LP), jax.grad(f_rf)(LP))


def test_kl_and_entropy_hand_values():
  lp = np.array([[-1.0, -3.0]])
  ref = np.array([[-2.0, -1.0]])
  mask = np.array([[1, 1]])
  _close(obj.kl_penalty(lp, ref, mask, estimator="k1"), (1.0 - 2.0) / 2)
  _close(obj.kl_penalty(lp, ref, mask, estimator="k2"), (0.5 + 2.0) / 2)
  _close(obj.kl_penalty(lp, ref, mask), ((np.exp(-1) + 1 - 1) + (np.exp(2) - 2 - 1)) / 2)
  # k3 is an unbiased, non-negative estimator of KL(p || q) on samples from p
  p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6])
  per = jax.vmap(lambda a, b: obj.kl_penalty(a[None, None], b[None, None], np.ones((1, 1))))(
      np.log(p), np.log(q))
  _close(np.sum(p * np.asarray(per)), np.sum(p * np.log(p / q)))
  logits = np.zeros((1, 2, 4))
  logits[0, 1] = np.log([0.5, 0.5, 1e-30, 1e-30])
  _close(obj.entropy_bonus(logits, np.array([[1, 1]])), (np.log(4) + np.log(2)) / 2, rtol=1e-5)
  _close(obj.entropy_bonus(logits, np.array([[1, 0]])), np.log(4))


# ---------------------------------------------------------------------------------------
# Gradients: finite differences (float64), Monte Carlo unbiasedness
# ---------------------------------------------------------------------------------------


def test_finite_difference_gradients():
  """Directional central differences vs jax.grad, in float64, all checks in one compile."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    B, T, V = 3, 5, 9
    ids, vals = jnp.array([2, 3, 5, 7]), jnp.array([1.0, 2.0, 3.0, 4.0], jnp.float64)
    logits = jnp.asarray(rng.normal(size=(B, V)))
    lp = jnp.asarray(-rng.uniform(0.1, 3.0, size=(B, T)))
    old = lp + 0.1 * jnp.asarray(rng.normal(size=(B, T)))
    tok_logits = jnp.asarray(rng.normal(size=(B, T, V)))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    adv = jnp.array([0.7, -1.2, 0.4], jnp.float64)
    tg = jnp.array([1.0, 4.0, 2.5], jnp.float64)
    w = jnp.asarray(rng.normal(size=(B,)))
    checks = {  # name: (f, args, argnums)
        **{f"expected_score[renorm={r}]": (
            lambda x, r=r: jnp.vdot(w, obj.expected_score(x, ids, vals, renormalize=r,
                                                          temperature=0.7)), (logits,), (0,))
           for r in (False, True)},
        "score_log_prob": (lambda x: jnp.vdot(w, obj.score_log_prob(x, jnp.array([2, 5, 0]))),
                           (logits,), (0,)),
        **{f"real_loss[{agg}]": (
            lambda a, b, agg=agg: obj.real_loss(a, mask, adv, b, tg, ids, vals, beta=0.3, lam=0.8,
                                                aggregation=agg)[0], (lp, logits), (0, 1))
           for agg in obj.AGGREGATIONS},
        "real_loss[ppo,renorm]": (
            lambda a, b: obj.real_loss(a, mask, adv, b, tg, ids, vals, beta=1.0, lam=0.5,
                                       renormalize=True, policy_loss="ppo",
                                       old_cot_log_probs=lp + 0.05)[0], (lp, logits), (0, 1)),
        "sft_loss": (lambda a: obj.sft_loss(a, mask)[0], (lp,), (0,)),
        "raft_loss": (lambda b: obj.raft_loss(b, tg, ids, vals)[0], (logits,), (0,)),
        "cot_raft_loss": (lambda a, b: obj.cot_raft_loss(a, mask, b, tg, ids, vals, lam=0.7)[0],
                          (lp, logits), (0, 1)),
        "policy_gradient_loss[ppo]": (
            lambda a: obj.policy_gradient_loss(a, mask, adv, old_log_probs=old, clip_eps=0.3)[0],
            (lp,), (0,)),
        **{f"kl_penalty[{e}]": (lambda a, e=e: obj.kl_penalty(a, old, mask, estimator=e),
                                (lp,), (0,)) for e in ("k1", "k2", "k3")},
        "entropy_bonus": (lambda x: obj.entropy_bonus(x, mask), (tok_logits,), (0,)),
    }
    dirs = {name: [jnp.asarray(rng.normal(size=args[i].shape)) for i in argnums]
            for name, (_, args, argnums) in checks.items()}
    h = 1e-5

    @jax.jit
    def run(dirs):
      out = {}
      for name, (f, args, argnums) in checks.items():
        grads = jax.grad(f, argnums=argnums)(*args)
        def shifted(s):
          a = list(args)
          for d, i in zip(dirs[name], argnums):
            a[i] = args[i] + s * d
          return f(*a)
        out[name] = (sum(jnp.vdot(g, d) for g, d in zip(grads, dirs[name])),
                     (shifted(h) - shifted(-h)) / (2 * h))
      return out

    for name, (analytic, fd) in run(dirs).items():
      assert abs(float(analytic)) > 1e-4, name  # a non-trivial direction
      np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6, atol=1e-8, err_msg=name)


def _toy(renormalize):
  """Toy judge: one-token CoT c ~ softmax(theta) over C choices; score logits W[c] over V."""
  C, V = 3, 7
  rng = np.random.default_rng(7)
  params = {"theta": jnp.asarray(0.8 * rng.normal(size=C), jnp.float32),
            "W": jnp.asarray(rng.normal(size=(C, V)), jnp.float32)}
  ids, vals = np.array([1, 2, 3, 4, 5]), np.arange(1.0, 6.0)
  y = 4.0

  def exact_J(p, lam):
    pi = jax.nn.softmax(p["theta"])
    y_hat = obj.expected_score(p["W"], ids, vals, renormalize=renormalize)
    r = -(y_hat - y) ** 2 + lam * jax.nn.log_softmax(p["W"])[:, 4]  # token 4 has value 4 = y
    return jnp.sum(pi * r)

  def group_grad(p, key, beta, lam, n):
    c = jax.random.categorical(key, p["theta"], shape=(n,))
    def loss(p):
      cot_lp = jax.nn.log_softmax(p["theta"])[c][:, None]   # [n, T=1]
      score_logits = p["W"][c]                              # [n, V]
      sl = jax.lax.stop_gradient(score_logits)               # no-grad scoring pass
      tgt = jnp.full((n,), y)
      reg = obj.regression_reward(obj.expected_score(sl, ids, vals, renormalize=renormalize), tgt)
      lp_y = obj.score_log_prob(sl, obj.target_token_ids_for(tgt, ids, vals))
      adv = obj.real_advantages(reg[None], lp_y[None], lam, shaping="log_prob", normalize=False,
                                clip=None)[0]
      return obj.real_loss(cot_lp, jnp.ones((n, 1)), adv, score_logits, tgt, ids, vals,
                           beta=beta, lam=lam, renormalize=renormalize)[0]
    return jax.grad(loss)(p)

  return params, exact_J, group_grad


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _mc_grads(group_grad, params, key, num_groups, n, beta, lam):
  """Mean and Monte Carlo standard error of the per-group gradient, flattened."""
  keys = jax.random.split(key, num_groups)
  g = jax.vmap(lambda kk: group_grad(params, kk, beta, lam, n))(keys)
  flat = jnp.concatenate([g["theta"], g["W"].reshape(num_groups, -1)], axis=1)
  return flat.mean(0), flat.std(0, ddof=1) / np.sqrt(num_groups)


def test_generalized_policy_gradient_is_unbiased():
  """E[grad real_loss] = -grad J (RLOO, no normalisation/clipping, beta = 1); beta = 0 is biased."""
  params, exact_J, group_grad = _toy(renormalize=False)
  C = params["theta"].shape[0]
  for lam in (0.0, 0.5):  # lam > 0: J gains + lam * log pi(y*), shaping "log_prob"
    g = jax.jit(jax.grad(exact_J))(params, lam)
    target = -np.concatenate([g["theta"], g["W"].reshape(-1)])
    mean, se = map(np.asarray,
                   _mc_grads(group_grad, params, jax.random.key(0), 20000, 4, 1.0, lam))
    z = (mean - target) / (se + 1e-9)
    assert np.max(np.abs(z)) < 5.0, (lam, z)  # 24 components, each within 5 MC std errors
    assert np.max(se) < 0.05 * np.max(np.abs(target))  # the test has resolution
    if lam == 0.0:
      # beta = 0 (CoT term only): the theta part is still right, but the gradient through the
      # score distribution is missing entirely -> biased.
      mean0, se0 = map(np.asarray,
                       _mc_grads(group_grad, params, jax.random.key(1), 20000, 4, 0.0, lam))
      z0 = (mean0 - target) / (se0 + se + 1e-9)
      assert np.max(np.abs(z0[:C])) < 5.0
      assert np.max(np.abs(z0[C:])) > 20.0
      np.testing.assert_allclose(mean0[C:], 0.0, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Exact enumeration: multi-token CoTs of varying length
# ---------------------------------------------------------------------------------------

# A tabular autoregressive policy over the CoT tokens {a, b, d}: a CoT ends at the delimiter d
# or after 3 tokens, so CoTs have lengths 1, 2 and 3 (15 of them). The token at step t is drawn
# from softmax(theta[state]), state = the prefix. The score logits of a CoT are its own row of W
# plus a term from the policy table at its last state, so theta gets gradient from both terms.
_A, _B, _D = 0, 1, 2
_PREFIXES = [(), (_A,), (_B,), (_A, _A), (_A, _B), (_B, _A), (_B, _B)]
_STATE = {p: i for i, p in enumerate(_PREFIXES)}


def _all_cots():
  cots = [(_D,)]
  for x in (_A, _B):
    cots.append((x, _D))
    for y in (_A, _B):
      for z in (_A, _B, _D):
        cots.append((x, y, z))
  return cots


_COTS = _all_cots()
_LENGTHS = np.array([len(c) for c in _COTS])
_TOK = jnp.array([list(c) + [0] * (3 - len(c)) for c in _COTS])             # [C, 3]
_ST = jnp.array([[_STATE[c[:t]] if t < len(c) else 0 for t in range(3)] for c in _COTS])
_LAST = jnp.array([_STATE[c[:len(c) - 1]] for c in _COTS])                  # state of the last step
_MASK = jnp.asarray((np.arange(3)[None, :] < _LENGTHS[:, None]).astype(np.float32))
_EIDS, _EVALS = np.array([1, 2, 3, 4, 5]), np.arange(1.0, 6.0)             # V = 7
_Y = 4.0


def _tab_params(seed=11):
  rng = np.random.default_rng(seed)
  return {"theta": jnp.asarray(0.9 * rng.normal(size=(len(_PREFIXES), 3))),
          "W": jnp.asarray(rng.normal(size=(len(_COTS), 7))),
          "P": jnp.asarray(0.5 * rng.normal(size=(3, 7)))}


def _tab_tokens(p):
  """Per-token log-probs [C, 3] (0 on padding) and score logits [C, 7] of every CoT."""
  logp = jax.nn.log_softmax(p["theta"], axis=-1)                            # [S, 3]
  tok_lp = jnp.take_along_axis(logp[_ST], _TOK[..., None], axis=-1)[..., 0] * _MASK
  score_logits = p["W"] + p["theta"][_LAST] @ p["P"]
  return tok_lp, score_logits


def _tab_reward(score_logits, lam):
  y_hat = obj.expected_score(score_logits, _EIDS, _EVALS)
  tid = obj.target_token_ids_for(jnp.full(y_hat.shape, _Y), _EIDS, _EVALS)
  return obj.regression_reward(y_hat, _Y) + lam * obj.score_log_prob(score_logits, tid)


def _tab_minus_grad_J(p, lam):
  """-grad J, J = sum_c pi(c) r(c): the exact objective's gradient by enumeration."""
  def J(p):
    tok_lp, score_logits = _tab_tokens(p)
    return jnp.sum(jnp.exp(tok_lp.sum(-1)) * _tab_reward(score_logits, lam))
  return jax.tree.map(jnp.negative, jax.grad(J)(p))


def _tab_expected_loss_grad(p, n, lam, beta, aggregation, stop_gradient_rewards=False):
  """E over every group of n CoTs of grad real_loss, enumerated exactly (C^n groups)."""
  groups = np.stack(np.meshgrid(*[np.arange(len(_COTS))] * n, indexing="ij"), -1).reshape(-1, n)
  tid = np.full((n,), 4, np.int32)  # the token of score value 4 = y*

  def group_loss(p, g):
    tok_lp, score_logits = _tab_tokens(p)
    lp, sl = tok_lp[g], score_logits[g]
    # The user's path: rewards from the same (differentiable) forward; real_loss treats the
    # advantages as constants.
    src = jax.lax.stop_gradient(sl) if stop_gradient_rewards else sl
    y_hat = obj.expected_score(src, _EIDS, _EVALS)
    reg = obj.regression_reward(y_hat, jnp.full((n,), _Y))
    adv = obj.real_advantages(reg[None], obj.score_log_prob(src, tid)[None], lam,
                              shaping="log_prob", estimator="rloo", normalize=False, clip=None)[0]
    loss, _ = obj.real_loss(lp, _MASK[g], adv, sl, jnp.full((n,), _Y), _EIDS, _EVALS, beta=beta,
                            lam=lam, aggregation=aggregation, target_token_ids=tid)
    return loss

  def weighted(p):
    tok_lp, _ = _tab_tokens(jax.lax.stop_gradient(p))
    prob = jnp.exp(tok_lp.sum(-1))                                          # [C]
    w = jnp.prod(prob[groups], axis=-1)                                     # P(group), constant
    return jnp.sum(w * jax.vmap(lambda g: group_loss(p, g))(groups)), jnp.sum(w)

  (_, total), grad = jax.value_and_grad(weighted, has_aux=True)(p)
  np.testing.assert_allclose(float(total), 1.0, rtol=1e-12)  # every group enumerated
  return grad


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(tree[k])) for k in sorted(tree)])


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_sequence_sum_is_exact_for_varying_length_cots(lam):
  """E[grad real_loss] = -grad J to float64 precision with aggregation="sequence-sum" (RLOO, no
  normalisation/clipping, beta = 1, log-prob shaping = lam), CoTs of lengths 1, 2 and 3, every
  group of 3 enumerated; token-mean and sequence-mean are measurably different."""
  with jax.enable_x64(True):
    p = _tab_params()
    assert sorted(set(_LENGTHS)) == [1, 2, 3]
    target = _flat(_tab_minus_grad_J(p, lam))
    got = _flat(_tab_expected_loss_grad(p, 3, lam, 1.0, "sequence-sum"))
    np.testing.assert_allclose(got, target, rtol=1e-9, atol=1e-12)
    assert np.abs(target).max() > 1e-2  # a non-trivial gradient
    for agg in ("token-mean", "sequence-mean"):
      other = _flat(_tab_expected_loss_grad(p, 3, lam, 1.0, agg))
      rel = np.abs(other - target).max() / np.abs(target).max()
      assert rel > 0.05, (agg, rel)  # biased, not rounding


def test_sequence_sum_mutations_are_caught():
  """The enumeration has power: a loss that lets gradient flow through the advantages, or puts
  the score token in the policy-gradient term, is not -grad J."""
  with jax.enable_x64(True):
    p = _tab_params()
    target = _flat(_tab_minus_grad_J(p, 0.0))
    np.testing.assert_allclose(  # the rewards' own stop_gradient changes nothing when it is there
        _flat(_tab_expected_loss_grad(p, 3, 0.0, 1.0, "sequence-sum", stop_gradient_rewards=True)),
        target, rtol=1e-9, atol=1e-12)
    broken = obj._broadcast_adv
    try:  # mutation 1: advantages not treated as constants
      obj._broadcast_adv = lambda a, lp: (jnp.asarray(a)[..., None]
                                          if jnp.ndim(a) == lp.ndim - 1 else jnp.asarray(a))
      jax.clear_caches()
      got = _flat(_tab_expected_loss_grad(p, 3, 0.0, 1.0, "sequence-sum"))
    finally:
      obj._broadcast_adv = broken
      jax.clear_caches()
    assert np.abs(got - target).max() > 0.05 * np.abs(target).max()

    # mutation 2: the target score token's log-prob inside the policy-gradient term
    def with_score_token(p, n=3):
      groups = np.stack(np.meshgrid(*[np.arange(len(_COTS))] * n, indexing="ij"),
                        -1).reshape(-1, n)
      def group_loss(p, g):
        tok_lp, sl = _tab_tokens(p)
        lp = jnp.concatenate([tok_lp[g], jax.nn.log_softmax(sl[g])[:, 4:5]], axis=1)
        mask = jnp.concatenate([_MASK[g], jnp.ones((n, 1))], axis=1)
        y_hat = obj.expected_score(sl[g], _EIDS, _EVALS)
        adv = obj.group_advantages(obj.regression_reward(y_hat, _Y)[None], normalize=False,
                                   clip=None)[0]
        return obj.real_loss(lp, mask, adv, sl[g], jnp.full((n,), _Y), _EIDS, _EVALS, beta=1.0,
                             lam=0.0, aggregation="sequence-sum")[0]
      def weighted(p):
        prob = jnp.exp(_tab_tokens(jax.lax.stop_gradient(p))[0].sum(-1))
        w = jnp.prod(prob[groups], axis=-1)
        return jnp.sum(w * jax.vmap(lambda g: group_loss(p, g))(groups))
      return jax.grad(weighted)(p)
    got = _flat(with_score_token(p))
    assert np.abs(got - target).max() > 0.05 * np.abs(target).max()


def test_token_mean_is_sequence_sum_scaled_by_mean_length():
  """token-mean with beta is exactly (1/L) x sequence-sum with beta * L, L = N_tokens / B, on any
  batch (what beta means under the authors' aggregation)."""
  rng = np.random.default_rng(5)
  B, T, V = 6, 7, 9
  lengths = np.array([1, 2, 3, 5, 7, 4])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  lp = jnp.asarray(-rng.uniform(0.1, 2.0, size=(B, T)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(B, V)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=(B,)), jnp.float32)
  tg = jnp.asarray([1.0, 3.0, 5.0, 2.0, 4.0, 3.0])
  ids, vals = np.array([2, 3, 4, 5, 6]), np.arange(1.0, 6.0)
  L = mask.sum() / B
  f = lambda agg, beta: jax.grad(lambda a, b: obj.real_loss(
      a, mask, adv, b, tg, ids, vals, beta=beta, lam=0.3, aggregation=agg)[0], (0, 1))(lp, logits)
  tm = f("token-mean", 0.2)
  ss = f("sequence-sum", 0.2 * L)
  for a, b in zip(tm, ss):
    _close(np.asarray(a) * L, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Micro-batching, jit, vmap, sharding
# ---------------------------------------------------------------------------------------


def _toy_batch(B=8, T=6, V=16, D=5, seed=3):
  """A tiny linear "model" and batch (numpy RNG: no jax.random compiles)."""
  rng = np.random.default_rng(seed)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  params = {"P": f32(0.5 * rng.normal(size=(D, V))), "Q": f32(rng.normal(size=(D, V)))}
  lengths = rng.integers(1, T + 1, size=(B, 1))
  batch = {
      "emb": f32(rng.normal(size=(B, T, D))),
      "tok": jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32),
      "mask": jnp.asarray(np.arange(T)[None] < lengths, jnp.int32),
      "h": f32(rng.normal(size=(B, D))),
      "adv": f32(rng.normal(size=(B,))),
      "targets": f32(rng.integers(1, 6, size=(B,))),
      "sample_mask": f32(np.arange(B) != 2),
  }
  return params, batch


IDS5, VALS5 = np.array([3, 4, 5, 6, 7]), np.arange(1.0, 6.0)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _full_and_micro(params, batch, aggregation, use_sample_mask):
  """Full-batch loss and gradient, and the sums of 4 micro-batches' (each [2, ...])."""
  full = jax.value_and_grad(_model_loss, has_aux=True)(params, batch, aggregation, None,
                                                       use_sample_mask)
  den = obj.real_loss_denominators(batch["mask"], aggregation=aggregation,
                                   sample_mask=batch["sample_mask"] if use_sample_mask else None)
  micro = jax.tree.map(lambda x: x.reshape(4, 2, *x.shape[1:]), batch)
  per_mb = jax.vmap(lambda mb: jax.value_and_grad(_model_loss, has_aux=True)(
      params, mb, aggregation, den, use_sample_mask))(micro)
  (losses, metrics), grads = per_mb
  return full, (losses.sum(0), jax.tree.map(lambda x: x.sum(0), grads)), metrics


def _model_loss(params, b, aggregation, denominators=None, use_sample_mask=False):
  cot_lp = obj.token_log_probs(b["emb"] @ params["P"], b["tok"])
  score_logits = b["h"] @ params["Q"]
  return obj.real_loss(cot_lp, b["mask"], b["adv"], score_logits, b["targets"], IDS5, VALS5,
                       beta=0.7, lam=0.3, aggregation=aggregation, denominators=denominators,
                       sample_mask=b["sample_mask"] if use_sample_mask else None)


def test_micro_batches_accumulate_to_full_batch():
  """Token mean over a batch with a dropped sample; sequence-mean: test_real_loss_sums_add_up."""
  aggregation, use_sample_mask = "token-mean", True
  params, batch = _toy_batch()
  ((full_loss, _), full_grad), (loss_acc, grad_acc), metrics = _full_and_micro(
      params, batch, aggregation, use_sample_mask)
  _close(loss_acc, full_loss)
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-5, atol=1e-6), grad_acc, full_grad)
  # the two terms of each micro-batch are its share of the full-batch terms
  _close(np.sum(metrics["pg_loss"]) + np.sum(metrics["refine_loss"]), full_loss)
  if aggregation == "token-mean":
    # ...whereas a mean of the micro-batches' own token means is not the full token mean
    n_full = float(np.sum(batch["mask"]))
    n_mb = np.asarray(batch["mask"]).reshape(4, -1).sum(1)
    naive = np.mean(np.asarray(metrics["pg_loss"]) * n_full / n_mb
                    + np.asarray(metrics["refine_loss"]) * 8 / 2)
    assert abs(naive - float(full_loss)) > 1e-3


@pytest.mark.parametrize("aggregation", obj.AGGREGATIONS)
def test_real_loss_sums_add_up(aggregation):
  params, b = _toy_batch()
  cot_lp = obj.token_log_probs(b["emb"] @ params["P"], b["tok"])
  sl = b["h"] @ params["Q"]
  args = lambda s: (cot_lp[s], b["mask"][s], b["adv"][s], sl[s], b["targets"][s], IDS5, VALS5)
  kw = dict(aggregation=aggregation, sample_mask=b["sample_mask"])
  halves = (slice(0, 4), slice(4, 8))
  parts = [obj.real_loss_sums(*args(s), **{**kw, "sample_mask": b["sample_mask"][s]})[0]
           for s in halves]
  total = jax.tree.map(jnp.add, *parts)
  full, _ = obj.real_loss(*args(slice(None)), beta=0.7, lam=0.3, **kw)
  _close(obj.real_loss_from_sums(total, beta=0.7, lam=0.3), full)
  _close(total.seq_count, 7)  # one sample dropped by sample_mask
  if aggregation == "token-mean":
    _close(total.pg_count, np.sum(np.asarray(b["mask"])[np.asarray(b["sample_mask"]) > 0]))
  # the same, through real_loss(denominators=...) on each half
  den = obj.real_loss_denominators(b["mask"], **kw)
  _close(sum(obj.real_loss(*args(s), beta=0.7, lam=0.3, denominators=den, aggregation=aggregation,
                           sample_mask=b["sample_mask"][s])[0] for s in halves), full)


def _step(lp, mask, adv, s, tg):
  """A trainer-like step: loss, metrics and gradients of real_loss."""
  (loss, metrics), grads = jax.value_and_grad(
      lambda lp, s: obj.real_loss(lp, mask, adv, s, tg, IDS5, VALS5, beta=0.5, lam=1.0),
      argnums=(0, 1), has_aux=True)(lp, s)
  return loss, metrics, grads


@functools.lru_cache(maxsize=None)
def _step_inputs_and_eager():
  params, b = _toy_batch(B=16)
  args = (obj.token_log_probs(b["emb"] @ params["P"], b["tok"]), b["mask"], b["adv"],
          b["h"] @ params["Q"], b["targets"])
  with jax.disable_jit():  # op by op: nothing compiled as a whole
    eager = _step(*args)
  return args, eager


def test_jit_matches_eager():
  args, eager = _step_inputs_and_eager()
  jax.tree.map(lambda a, c: _close(a, c), eager, jax.jit(_step)(*args))


def test_vmap_matches_loop():
  args, _ = _step_inputs_and_eager()
  lp, mask, adv, sl, tg = args
  stack = lambda x: np.stack([np.asarray(x), 0.5 * np.asarray(x), np.asarray(x)[::-1]])
  loss = lambda lp, s, a: obj.real_loss(lp, mask, a, s, tg, IDS5, VALS5, beta=0.5, lam=1.0)
  lps, sls, advs = stack(lp), stack(sl), stack(adv)
  vm = jax.vmap(loss)(lps, sls, advs)
  vm = jax.tree.map(np.asarray, vm)
  for i in range(3):
    jax.tree.map(lambda a, c: _close(a[i], c), vm, loss(lps[i], sls[i], advs[i]))
  rng = np.random.default_rng(0)
  E, lp = rng.uniform(0, 5, (3, 4, 6)), np.log(rng.uniform(0.01, 1, (3, 4, 6)))
  got = jax.vmap(lambda e, l: obj.real_advantages(obj.regression_reward(e, 3.0), l, 1.0))(
      jnp.asarray(E, jnp.float32), jnp.asarray(lp, jnp.float32))
  _close(got, _authors_advantages(E, lp, 3.0), atol=1e-4)


def test_sharded_advantages_match_numpy():
  devices = np.array(jax.devices()[:8])
  mesh = Mesh(devices, ("data",), axis_types=(AxisType.Auto,))
  rng = np.random.default_rng(5)
  E, lp = rng.uniform(0, 5, (16, 8)), np.log(rng.uniform(0.01, 1, (16, 8)))
  y = rng.integers(1, 6, (16, 1)).astype(float)
  put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, P("data")))
  out = jax.jit(lambda e, l, y: obj.real_advantages(obj.regression_reward(e, y), l, 1.0))(
      put(E), put(lp), put(y))
  _close(out, _authors_advantages(E, lp, y), atol=1e-4)


def test_sharded_batch_matches_eager():
  devices = np.array(jax.devices()[:8]).reshape(4, 2)
  mesh = Mesh(devices, ("data", "tensor"), axis_types=(AxisType.Auto, AxisType.Auto))
  args, eager = _step_inputs_and_eager()
  row = NamedSharding(mesh, P("data"))
  # batch over "data"; the score logits also split their vocabulary over "tensor"
  shardings = (row, row, row, NamedSharding(mesh, P("data", "tensor")), row)
  sharded = [jax.device_put(x, s) for x, s in zip(args, shardings)]
  assert len(sharded[3].sharding.device_set) == 8
  out = jax.jit(_step)(*sharded)
  jax.tree.map(lambda a, c: _close(a, c, rtol=1e-5, atol=1e-6), eager, out)
  assert out[2][1].shape == (16, 16)


# ---------------------------------------------------------------------------------------
# README example
# ---------------------------------------------------------------------------------------


def test_readme_example_runs():
  text = (ROOT / "README.md").read_text()
  section = re.search(r"<!-- SECTION:objectives -->(.*?)<!-- /SECTION:objectives -->", text, re.S)
  assert section, "objectives section markers missing from README.md"
  body = section.group(1)
  blocks = re.findall(r"```python\n(.*?)```", body, re.S)
  assert blocks, "no ```python block in the README objectives section"
  namespace = {"__name__": "readme_example"}
  exec(compile(blocks[0], "README.md:objectives", "exec"), namespace)
  assert np.isfinite(float(namespace["loss"]))


def test_registries_select_by_name():
  """A registered estimator is used by name; a name registers once; an unknown name is one
  line naming the registered ones; the losses, policy losses and rewards the trainer picks by
  name compute what the functions do (behaviour through the registry, not identity)."""
  @obj.register_advantage_estimator("_test_median")
  def _median(rewards, mask):
    return jnp.where(mask > 0, rewards - jnp.median(rewards, axis=-1, keepdims=True), 0.0)
  try:
    got = obj.group_advantages(np.array([[1.0, 2.0, 10.0]]), estimator="_test_median",
                               normalize=False, clip=None)
    _close(got, [[-1.0, 0.0, 8.0]])
    with pytest.raises(ValueError, match="already registered"):
      obj.register_advantage_estimator("_test_median")(_median)
  finally:
    obj.ADVANTAGE_ESTIMATORS.unregister("_test_median")
  with pytest.raises(ValueError, match=r"unknown advantage estimator 'nope'; registered: "
                                       r"\['grpo', 'none', 'rloo'\]"):
    obj.group_advantages(np.array([[1.0, 2.0]]), estimator="nope")
  assert registry.REWARDS is obj.REWARDS and registry.register_reward is obj.register_reward
  # The losses by name: the values of the hand-checked functions above.
  _close(obj.LOSSES.lookup("sft")(LP, MASK)[0], 3.5 / 3)
  _close(obj.LOSSES.lookup("raft")(SCORE_LOGITS, TARGETS, IDS, VALS)[0], 0.5)
  for name in ("cot_raft", "tract"):
    _close(obj.LOSSES.lookup(name)(LP, MASK, SCORE_LOGITS, TARGETS, IDS, VALS, lam=3.0)[0],
           3.5 / 3 + 3.0 * 0.5)
  _close(obj.LOSSES.lookup("pg")(LP, MASK, ADV)[0], 5.5 / 3)
  # Policy losses by name: PPO against the sampling policy itself has REINFORCE's gradient.
  adv = jnp.asarray(ADV, jnp.float32)[:, None] * jnp.ones(np.shape(LP), jnp.float32)
  grads = {name: jax.grad(lambda x, f=obj.POLICY_LOSSES.lookup(name): jnp.sum(
      f(x, adv, old_log_probs=jax.lax.stop_gradient(x))[0] * MASK))(jnp.asarray(LP, jnp.float32))
      for name in ("reinforce", "ppo")}
  _close(grads["ppo"], grads["reinforce"])
  _close(grads["reinforce"], -np.asarray(adv) * MASK)
  _close(obj.REWARDS.lookup("regression")(np.array([2.0]), np.array([4.0])), [-4.0])
  _close(obj.REWARDS.lookup("binary")(np.array([3.0, 4.0]), np.array([4.0, 4.0])), [0.0, 1.0])
