"""The benchmarks' MFU numerator (`benchmarks/common.train_step_flops`) equals the matmul FLOPs
of the model's own gradient program, counted independently from its jaxpr: every dot_general
(2 x output elements x contracted size), through scans and sub-jaxprs."""
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.extend import core as jcore

from real_jax.models.qwen3 import Qwen3, Qwen3Config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from common import train_step_flops  # noqa: E402


def _dot_flops(jaxpr: jcore.Jaxpr, mult: int = 1) -> int:
  total = 0
  for e in jaxpr.eqns:
    if e.primitive.name == "dot_general":
      (contract, _), _ = e.params["dimension_numbers"]
      k = math.prod(e.invars[0].aval.shape[i] for i in contract)
      total += mult * 2 * math.prod(e.outvars[0].aval.shape) * k
    inner = mult * (e.params.get("length", 1) if e.primitive.name == "scan" else 1)
    for value in e.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jcore.Jaxpr):
          total += _dot_flops(sub, inner)
  return total


@pytest.mark.parametrize("tied,scan,cols", [(True, False, 33), (False, True, 33),
                                            (True, True, 128)])
def test_train_step_flops_equal_the_gradient_programs_matmuls(tied, scan, cols):
  """Output layer on `cols` scored columns (the response + score position, or all of them),
  decoder and attention on every column, forward and backward."""
  cfg = Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=1e4,
                    tie_word_embeddings=tied, scan_layers=scan)
  graphdef, params = nnx.split(Qwen3(cfg, rngs=nnx.Rngs(0)))
  rows, seq = 4, 128
  tokens = jnp.zeros((rows, seq), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(seq), (rows, seq))
  mask = jnp.ones((rows, seq), bool)

  def loss(p):
    model = nnx.merge(graphdef, p)
    hidden, _ = model(tokens, positions, mask)
    return jax.nn.logsumexp(model.logits(hidden[:, -cols:]), -1).sum()

  counted = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  parts = train_step_flops(cfg, rows, seq, scored_columns=cols)
  assert parts["total"] == counted
  assert parts["output"] == 6 * 4096 * 256 * rows * cols
