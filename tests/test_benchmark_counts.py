"""The benchmarks' MFU numerator (`benchmarks/common.train_step_flops` with
`models.output_columns`) equals the matmul FLOPs of the gradient program, counted independently
from its jaxpr: every dot_general (2 x output elements x contracted size), through scans and
sub-jaxprs; both for a plain loss over the model and for the trainer's own REAL objective."""
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.extend import core as jcore

from real_jax.judge.scores import ScoreTokens
from real_jax.models import output_columns
from real_jax.models.qwen3 import Qwen3, Qwen3Config
from real_jax.train import steps as steps_lib
from real_jax.train.batch import RLBatch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from common import decode_matmul_program, train_step_flops  # noqa: E402
from sampler import decode_step_gflop  # noqa: E402


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


@pytest.mark.parametrize("response_width", [0, 65])
def test_train_step_flops_equal_the_real_objectives_matmuls(response_width):
  """The trainer's REAL loss (`steps.real_objective`): the output projection runs on the
  response's log-prob columns padded to whole chunks (65 -> 2 x 33) plus the score position."""
  cfg = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e4)
  graphdef, params = nnx.split(Qwen3(cfg, rngs=nnx.Rngs(0)))
  rows, seq = 4, 160
  f32 = lambda *shape: jnp.zeros(shape, jnp.float32)
  batch = RLBatch(tokens=jnp.ones((rows, seq), jnp.int32), mask=jnp.ones((rows, seq), bool),
                  score_pos=jnp.full((rows,), seq - 2, jnp.int32), cot_mask=f32(rows, seq),
                  old_lp=f32(rows, seq), ref_lp=f32(rows, seq), target=f32(rows),
                  target_id=jnp.full((rows,), 13, jnp.int32), adv=f32(rows),
                  pg_keep=jnp.ones((rows,), jnp.float32), refine_keep=jnp.ones((rows,), jnp.float32))
  st = ScoreTokens(token_ids=(11, 12, 13, 14, 15), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                   delimiter_ids=(20, 21), eos_id=1)
  loss = steps_lib.real_objective(st, steps_lib.RLLossConfig(beta=1.0, lam=1.0,
                                                             response_width=response_width))
  den = loss.denominators(batch)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss.fn(graphdef, p, batch, den)[0]))(params)
  cols = output_columns(seq, response_width)
  assert cols == (66 + 1 if response_width else 159 + 1)  # 159 columns: 3 chunks of 53
  # The program also recomputes each log-prob chunk's logits in the backward pass (they are
  # never saved): 2 x V x D per log-prob column, which model FLOPs (the MFU numerator) leave out.
  remat = 2 * 512 * 64 * rows * (cols - 1)
  assert train_step_flops(cfg, rows, seq, cols)["total"] + remat == _dot_flops(jaxpr.jaxpr)


def test_decode_matmul_program_runs_the_decode_steps_matmuls():
  """The second bound's program: its matmul FLOPs are the ones it divides by, and the decode
  step's FLOPs without attention (benchmarks/sampler.decode_step_gflop at zero context)."""
  cfg = Qwen3Config(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=3,
                    num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=1e4)
  rows = 8
  step, args, flops = decode_matmul_program(cfg, rows)
  assert _dot_flops(jax.make_jaxpr(step)(*args).jaxpr) == flops
  assert flops == pytest.approx(1e9 * decode_step_gflop(cfg, rows, 0, 0))
