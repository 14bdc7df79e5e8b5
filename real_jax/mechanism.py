"""The mechanism behind REAL vs binary-reward RL, exactly, without a language model.

A tabular judge sees item x, samples a discrete latent "chain of thought" z ~ pi(z | x) =
softmax(theta[x]) (Z choices) and then a score k ~ pi(k | x, z) = softmax(W[x, z]) over the score
values 1..5; its RAIL readout is y_hat(x, z) = sum_k k pi(k | x, z). Graders disagree: item x is
labelled y* ~ p*(. | x), so the evaluation target E[y* | x] is fractional and differs from the
mode of p*.

Both methods are trained by their estimators' EXACT expected gradients: every label y*, every
group of n CoTs (and, for binary RL, every sampled score) is enumerated and weighted by its
probability, and each group's loss is the library's own:

  * REAL: `objectives.real_loss` (sequence-sum, leave-one-out advantages, beta = 1), whose
    expected gradient is -grad J_REAL, J_REAL = E[-(y_hat - y*)^2]. Its optimum: y_hat(x) =
    E[y* | x], the mean of the graders.
  * binary RL: `objectives.policy_gradient_loss` on the action (z, k) with the reward
    1[k == y*] and leave-one-out advantages: the exact gradient of J_bin = P(k == y*). Its
    optimum puts all mass on the MODE of p*, so y_hat -> mode.

`train` runs plain gradient ascent on those exact gradients and records the Pearson correlation
of each readout with E[y* | x] along the way; `notebooks/01_objectives.ipynb` plots it and
`tests/test_mechanism.py` checks the fixed points. Everything is a pure function of arrays.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from real_jax import objectives as obj

__all__ = ["SCORES", "SCORE_IDS", "Items", "make_items", "init_params", "y_hat", "predictions",
    "real_objective", "binary_objective", "real_expected_grad", "binary_expected_grad", "pearson",
    "train"]

SCORES = np.arange(1.0, 6.0)  # score values; in the tabular vocabulary token k - 1 has value k
SCORE_IDS = np.arange(5)


class Items(NamedTuple):
  """p_star [X, 5]: the graders' label distribution per item; mean [X] = E[y* | x]; mode [X]."""
  p_star: np.ndarray
  mean: np.ndarray
  mode: np.ndarray


def make_items(num_items: int = 40, *, spread: float = 0.8, near_miss: float = 0.3,
               seed: int = 0) -> Items:
  """Items with graded ambiguity.

  Each item has a latent quality q ~ U[1, 5]; graders give k with probability proportional to
  exp(-(k - q)^2 / (2 spread^2)). A fraction `near_miss` of the items are near misses that
  graders split on: half the mass on floor(q), half on a grade two steps up. E[y*|x] then lies
  between grades and differs from the mode.
  """
  rng = np.random.default_rng(seed)
  q = rng.uniform(1.0, 5.0, num_items)
  p = np.exp(-(SCORES[None, :] - q[:, None]) ** 2 / (2 * spread ** 2))
  p /= p.sum(1, keepdims=True)
  for i in np.nonzero(rng.uniform(size=num_items) < near_miss)[0]:
    lo = int(np.clip(np.floor(q[i]), 1, 3))
    split = rng.uniform(0.35, 0.65)
    p[i] = 0.0
    p[i, lo - 1], p[i, lo + 1] = split, 1.0 - split
  mean = p @ SCORES
  return Items(p_star=p, mean=mean, mode=SCORES[np.argmax(p, axis=1)])


def init_params(num_items: int, num_cots: int = 3, *, seed: int = 0) -> dict[str, jax.Array]:
  """theta [X, Z] (CoT logits), W [X, Z, 5] (score logits), small random values."""
  rng = np.random.default_rng(seed)
  return {"theta": jnp.asarray(0.1 * rng.normal(size=(num_items, num_cots)), jnp.float32),
          "W": jnp.asarray(0.1 * rng.normal(size=(num_items, num_cots, 5)), jnp.float32)}


def _groups(num_choices: int, n: int) -> np.ndarray:
  """Every ordered group of n choices, [num_choices^n, n]."""
  return np.array(list(itertools.product(range(num_choices), repeat=n)), np.int32)


def y_hat(params) -> jax.Array:
  """[X, Z]: the RAIL readout of every (item, CoT)."""
  return obj.expected_score(params["W"], SCORE_IDS, SCORES)


def predictions(params) -> dict[str, jax.Array]:
  """Per item: "rail" = E_z[y_hat(x, z)] (the expected RAIL readout), "greedy" = the score of
  the most likely (z, k) pair (a greedy standard readout), "sampled" = E[k] under the policy."""
  pz = jax.nn.softmax(params["theta"], axis=-1)           # [X, Z]
  pk = jax.nn.softmax(params["W"], axis=-1)               # [X, Z, 5]
  joint = pz[..., None] * pk                              # [X, Z, 5]
  flat = joint.reshape(joint.shape[0], -1)
  greedy = jnp.asarray(SCORES)[jnp.argmax(flat, axis=-1) % 5]
  return {"rail": jnp.sum(pz * y_hat(params), axis=-1), "greedy": greedy,
          "sampled": jnp.einsum("xzk,k->x", joint, jnp.asarray(SCORES))}


def real_objective(params, p_star) -> jax.Array:
  """J_REAL = mean_x E_{y*, z}[-(y_hat(x, z) - y*)^2], enumerated."""
  pz = jax.nn.softmax(params["theta"], axis=-1)
  err = (y_hat(params)[..., None] - jnp.asarray(SCORES)) ** 2        # [X, Z, 5]
  return -jnp.mean(jnp.einsum("xz,xk,xzk->x", pz, jnp.asarray(p_star), err))


def binary_objective(params, p_star) -> jax.Array:
  """J_bin = mean_x P(k == y*) with (z, k) sampled from the policy, enumerated."""
  pz = jax.nn.softmax(params["theta"], axis=-1)
  pk = jax.nn.softmax(params["W"], axis=-1)
  return jnp.mean(jnp.einsum("xz,xzk,xk->x", pz, pk, jnp.asarray(p_star)))


@functools.partial(jax.jit, static_argnames=("n",))
def real_expected_grad(params, p_star, n: int = 2):
  """E over labels and groups of n CoTs of grad `objectives.real_loss` (sequence-sum, RLOO,
  beta = 1, lam = 0), per item, averaged over items: equals -grad J_REAL exactly."""
  num_items, num_cots = params["theta"].shape
  groups = _groups(num_cots, n)                            # [G, n]

  def loss(p):
    logp_z = jax.nn.log_softmax(p["theta"], axis=-1)       # [X, Z]
    def item_group_label(x, g, y):
      lp = logp_z[x, g][:, None]                           # [n, T=1]
      sl = p["W"][x, g]                                    # [n, 5]
      tgt = jnp.full((n,), y)
      reg = obj.regression_reward(obj.expected_score(jax.lax.stop_gradient(sl), SCORE_IDS,
                                                     SCORES), tgt)
      adv = obj.group_advantages(reg[None], estimator="rloo", normalize=False, clip=None)[0]
      return obj.real_loss(lp, jnp.ones((n, 1)), adv, sl, tgt, SCORE_IDS, SCORES, beta=1.0,
                           lam=0.0, aggregation="sequence-sum")[0]
    pz = jax.lax.stop_gradient(jnp.exp(logp_z))
    xs, gs, ys = np.meshgrid(np.arange(num_items), np.arange(len(groups)), np.arange(5),
                             indexing="ij")
    xs, gs, ys = xs.ravel(), gs.ravel(), ys.ravel()
    gj = jnp.asarray(groups)
    losses = jax.vmap(lambda x, g, y: item_group_label(x, gj[g], jnp.asarray(SCORES)[y]))(
        jnp.asarray(xs), jnp.asarray(gs), jnp.asarray(ys))
    w = jnp.prod(pz[xs[:, None], groups[gs]], axis=-1) * jnp.asarray(p_star)[xs, ys]
    return jnp.sum(w * losses) / num_items

  return jax.grad(loss)(params)


@functools.partial(jax.jit, static_argnames=("n",))
def binary_expected_grad(params, p_star, n: int = 2):
  """E over labels and groups of n sampled (CoT, score) actions of grad
  `objectives.policy_gradient_loss` with the reward 1[k == y*] and RLOO advantages: equals
  -grad J_bin exactly."""
  num_items, num_cots = params["theta"].shape
  actions = np.array([(z, k) for z in range(num_cots) for k in range(5)], np.int32)  # [A, 2]
  groups = _groups(len(actions), n)                        # [G, n]

  def loss(p):
    logp_z = jax.nn.log_softmax(p["theta"], axis=-1)       # [X, Z]
    logp_k = jax.nn.log_softmax(p["W"], axis=-1)           # [X, Z, 5]
    aj = jnp.asarray(actions)
    def item_group_label(x, g, y):
      z, k = aj[g, 0], aj[g, 1]
      lp = jnp.stack([logp_z[x, z], logp_k[x, z, k]], axis=-1)  # [n, 2]: the CoT, the score
      reward = (k == y).astype(jnp.float32)
      adv = obj.group_advantages(reward[None], estimator="rloo", normalize=False, clip=None)[0]
      return obj.policy_gradient_loss(lp, jnp.ones((n, 2)), adv,
                                      aggregation="sequence-sum")[0]
    pa = jax.lax.stop_gradient(jnp.exp(logp_z[:, actions[:, 0]]
                                       + logp_k[:, actions[:, 0], actions[:, 1]]))  # [X, A]
    xs, gs, ys = np.meshgrid(np.arange(num_items), np.arange(len(groups)), np.arange(5),
                             indexing="ij")
    xs, gs, ys = xs.ravel(), gs.ravel(), ys.ravel()
    gj = jnp.asarray(groups)
    losses = jax.vmap(lambda x, g, y: item_group_label(x, gj[g], y))(
        jnp.asarray(xs), jnp.asarray(gs), jnp.asarray(ys))
    w = jnp.prod(pa[xs[:, None], groups[gs]], axis=-1) * jnp.asarray(p_star)[xs, ys]
    return jnp.sum(w * losses) / num_items

  return jax.grad(loss)(params)


def pearson(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def train(method: str, items: Items, *, steps: int = 300, lr: float = 1.0, num_cots: int = 3,
          n: int = 2, seed: int = 0, record_every: int = 10) -> dict[str, np.ndarray]:
  """Gradient ascent with the exact expected gradient of "real" or "binary".

  Returns {"step" [S], "rail_pearson" [S], "greedy_pearson" [S], "objective" [S], and the
  final "rail" [X], "greedy" [X]}; Pearson is against E[y* | x].
  """
  grad_fn = {"real": real_expected_grad, "binary": binary_expected_grad}[method]
  objective = {"real": real_objective, "binary": binary_objective}[method]
  params = init_params(len(items.mean), num_cots, seed=seed)
  p_star = jnp.asarray(items.p_star, jnp.float32)

  @jax.jit
  def step(p):
    g = grad_fn(p, p_star, n=n)  # the gradient of the loss: descend
    return jax.tree.map(lambda w, d: w - lr * d, p, g)

  hist = {"step": [], "rail_pearson": [], "greedy_pearson": [], "objective": []}
  for t in range(steps + 1):
    if t % record_every == 0 or t == steps:
      pr = predictions(params)
      hist["step"].append(t)
      hist["rail_pearson"].append(pearson(pr["rail"], items.mean))
      hist["greedy_pearson"].append(pearson(pr["greedy"], items.mean))
      hist["objective"].append(float(objective(params, p_star)))
    if t < steps:
      params = step(params)
  out = {k: np.asarray(v) for k, v in hist.items()}
  pr = predictions(params)
  out.update(rail=np.asarray(pr["rail"]), greedy=np.asarray(pr["greedy"]), params=params)
  return out
