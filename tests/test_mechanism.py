"""The tabular mechanism (real_jax.mechanism): exact expected gradients of both estimators, and
their fixed points under ambiguous labels (REAL -> the graders' mean, binary RL -> the mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax import mechanism as M


@pytest.fixture(scope="module")
def items():
  return M.make_items(40, seed=0)


def test_items_are_ambiguous(items):
  np.testing.assert_allclose(items.p_star.sum(1), 1.0, rtol=1e-12)
  frac = np.abs(items.mean - np.round(items.mean))
  assert np.mean(frac > 0.2) > 0.3  # many targets lie between grades
  assert M.pearson(items.mode, items.mean) < 0.95  # the mode loses information


@pytest.mark.parametrize("method", ["real", "binary"])
def test_enumerated_loss_gradient_is_the_objective_gradient(items, method):
  """E over labels and groups of the library loss's gradient = -grad J, exactly (float32)."""
  p = M.init_params(len(items.mean), 3, seed=1)
  ps = jnp.asarray(items.p_star, jnp.float32)
  grad_fn = {"real": M.real_expected_grad, "binary": M.binary_expected_grad}[method]
  J = {"real": M.real_objective, "binary": M.binary_objective}[method]
  got = grad_fn(p, ps)
  want = jax.grad(lambda q: -J(q, ps))(p)
  for k in want:
    scale = float(jnp.abs(want[k]).max())
    assert scale > 1e-4
    np.testing.assert_allclose(got[k], want[k], atol=1e-5 * scale)


def test_real_converges_to_the_mean_binary_rl_to_the_mode(items):
  real = M.train("real", items, steps=600, lr=2.0, record_every=100)
  binary = M.train("binary", items, steps=1500, lr=50.0, record_every=500)
  assert np.abs(real["rail"] - items.mean).max() < 0.05
  assert real["rail_pearson"][-1] > 0.999  # the Bayes ceiling: E[y*|x] itself
  assert np.median(np.abs(binary["rail"] - items.mode)) < 0.02
  assert binary["objective"][-1] > 0.99 * items.p_star.max(1).mean()  # J_bin near its maximum
  ceiling_mode = M.pearson(items.mode, items.mean)
  assert abs(binary["rail_pearson"][-1] - ceiling_mode) < 0.01
  assert real["rail_pearson"][-1] - binary["rail_pearson"][-1] > 0.05
