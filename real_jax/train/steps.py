"""Pure, jitted training steps built from `real_jax.objectives`.

A *loss* here is a pure function `loss(graphdef, params, micro_batch, denominators) ->
(loss, metrics)` whose loss and metrics are **additive over micro-batches**: every mean is taken
with the full batch's denominators (computed once by `denominators(batch)`), so summing the
micro-batch values gives exactly the full-batch token means, and summing their gradients gives
exactly the full-batch gradient (objectives' (sum, denominator) forms).

`make_train_step` turns a loss into `step(state, batch) -> (state, metrics)`:
  * the batch `[B, ...]` is split into `M` micro-batches (rows m, m+M, m+2M, ... form micro-batch
    m, which keeps every micro-batch spread over the data axes without communication) and the
    gradients are accumulated with `lax.scan`;
  * AdamW with global-norm clipping (`state.py`);
  * a step whose loss or gradient norm is not finite is skipped: parameters and optimizer state
    are kept, `state["skipped"]` is incremented, metrics["applied"] = 0;
  * `jax.jit` with explicit in/out shardings (state by the logical rules, batch over data x fsdp)
    and the state donated.

Batches are the typed pytrees of `train/batch.py`: `LMBatch` for the supervised losses,
`RLBatch` for REAL and standard RL.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from real_jax import objectives as obj
from real_jax import sharding as shd
from real_jax.layout import positions_from_mask
from real_jax.models import CandidatePaths, score_candidates, score_sequences
from real_jax.train import state as state_lib
from real_jax.train.batch import LMBatch, RLBatch

__all__ = ["Batch", "forward", "score_reading", "token_entropies", "Loss", "sft_objective", "raft_objective",
    "CotRaftDenominators", "cot_raft_objective", "RLLossConfig", "RealDenominators",
    "real_objective", "grpo_objective", "batch_shardings", "make_train_step", "AccumulatingStep"]

Batch = LMBatch | RLBatch


# ---------------------------------------------------------------------------------------------
# Forward passes


def forward(graphdef, params, tokens, mask, score_pos, response_width: int = 0,
            segment_ids=None, candidates: CandidatePaths | None = None):
  """(token_log_probs [B,L] with entry t = log p(tokens[t] | tokens[<t]), score_logits [B,V]).

  With a static `response_width` > 0 only the last response_width columns get log-probs.
  Packed rows (`segment_ids` [B,L]): score_pos and score_logits are per segment slot ([B,S],
  [B,S,V]).

  The teacher-forced scoring pass `real_jax.models.score_sequences` (chunked; never a full
  [B,L,V] float32 array for a large vocabulary), at temperature 1 (the policy itself).

  Scales of several-token scores (`candidates`, static): `models.score_candidates`, one pass
  per path of the score tree; score_logits are then `objectives.candidate_logits` [B, K+1]
  (read with `ScoreSpec.candidates`) and token_log_probs hold the rows' own log-probs up to
  the score position only (the losses' masks end there).
  """
  if candidates is not None:
    if segment_ids is not None:
      raise ValueError("scores of several tokens are read from unpacked rows (data.pack off)")
    out = score_candidates(graphdef, params, tokens, mask, score_pos, candidates,
                           response_width=response_width)
    return out.token_log_probs, obj.candidate_logits(out.score_log_probs)
  out = score_sequences(graphdef, params, tokens, mask, score_pos, temperature=1.0,
                        response_width=response_width, segment_ids=segment_ids)
  return out.token_log_probs, out.score_logits


def score_reading(score_tokens) -> tuple[obj.ScoreSpec, CandidatePaths | None]:
  """How the losses read the scale's scores: (spec, None) from the score tokens' logits when
  every score is one token, else (`ScoreSpec.candidates`, the scale's `CandidatePaths`)."""
  cands = CandidatePaths.of(score_tokens) if score_tokens.multi_token else None
  return obj.ScoreSpec.read(score_tokens), cands


def token_entropies(graphdef, params, tokens, mask, chunk: int = 128):
  """Per-token policy entropy [B,L] (entry t: entropy of the distribution of tokens[t]).

  Computes logits chunk by chunk over time; only used when an entropy bonus is on.
  """
  model = nnx.merge(graphdef, params)
  hidden, _ = model(tokens, positions_from_mask(mask), mask)
  b, l, d = hidden.shape
  c = min(chunk, l)
  pad = (-l) % c
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, (l + pad) // c, c, d)

  def one(hc):  # [B, c, D] -> [B, c]
    return obj.token_entropy(model.logits(hc))

  ent = jax.lax.map(one, jnp.moveaxis(h, 1, 0))  # [n, B, c]
  ent = jnp.moveaxis(ent, 0, 1).reshape(b, l + pad)[:, :l]
  # hidden position t-1 predicts token t: shift right so entry t matches tokens[t].
  return jnp.pad(ent[:, :-1], ((0, 0), (1, 0)))


# ---------------------------------------------------------------------------------------------
# Losses (additive over micro-batches)


@dataclasses.dataclass(frozen=True)
class Loss:
  """A method's objective: `denominators(batch)` once per step, `fn` per micro-batch."""
  denominators: Callable[[Batch], Any]
  fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  name: str = ""


def sft_objective() -> Loss:
  """Cross-entropy on the target tokens (warm-up SFT on demonstration CoT + score + EOS)."""

  def denominators(batch):
    _, n = obj.masked_aggregate_sums(jnp.zeros(batch.loss_mask.shape), batch.loss_mask,
                                     sample_mask=batch.row_mask)
    return n

  def fn(graphdef, params, mb, den):
    lp, _ = forward(graphdef, params, mb.tokens, mb.mask, mb.score_pos,
                    segment_ids=mb.segment_ids)
    loss, _ = obj.sft_loss(lp, mb.loss_mask, sample_mask=mb.row_mask, denominator=den)
    _, n = obj.masked_aggregate_sums(lp, mb.loss_mask, sample_mask=mb.row_mask)
    return loss, {"loss": loss, "ce": loss, "tokens": n}

  return Loss(denominators, fn, "sft")


def raft_objective(score_tokens, *, renormalize: bool = False) -> Loss:
  """RAFT: squared error of y_hat read right after prompt + delimiter (no CoT)."""
  spec, cands = score_reading(score_tokens)

  def denominators(batch):
    return jnp.sum(batch.sample_mask)

  def fn(graphdef, params, mb, den):
    _, logits = forward(graphdef, params, mb.tokens, mb.mask, mb.score_pos,
                        segment_ids=mb.segment_ids, candidates=cands)
    loss, _ = obj.raft_loss(logits, mb.target, spec.ids, spec.values, renormalize=renormalize,
                            sample_mask=mb.sample_mask, denominator=den)
    y_hat = obj.expected_score(jax.lax.stop_gradient(logits), spec.ids, spec.values,
                               renormalize=renormalize)
    w = mb.sample_mask
    return loss, {"loss": loss, "mse": loss,
                  "y_hat_mean": jnp.sum(y_hat * w) / jnp.maximum(den, 1.0)}

  return Loss(denominators, fn, "raft")


class CotRaftDenominators(NamedTuple):
  """Full-batch denominators of CoT-RAFT: CoT tokens (the CE) and rows (the squared error)."""
  tokens: jax.Array
  rows: jax.Array


def cot_raft_objective(score_tokens, *, lam: float = 1.0, renormalize: bool = False) -> Loss:
  """TRACT / CoT-RAFT: CE over the CoT tokens (score token excluded) + lam * (y_hat - y*)^2
  (`objectives.cot_raft_loss`, its two terms with their own row masks so packed batches, whose
  records are [B,S] slots, use the same code)."""
  spec, cands = score_reading(score_tokens)

  def denominators(batch):
    tokens, _ = obj.real_loss_denominators(batch.loss_mask, sample_mask=batch.row_mask)
    return CotRaftDenominators(tokens, jnp.sum(batch.sample_mask.astype(jnp.float32)))

  def fn(graphdef, params, mb, den):
    lp, logits = forward(graphdef, params, mb.tokens, mb.mask, mb.score_pos,
                         segment_ids=mb.segment_ids, candidates=cands)
    ce, _ = obj.sft_loss(lp, mb.loss_mask, sample_mask=mb.row_mask, denominator=den.tokens)
    mse, _ = obj.raft_loss(logits, mb.target, spec.ids, spec.values, renormalize=renormalize,
                           sample_mask=mb.sample_mask, denominator=den.rows)
    loss = ce + lam * mse
    y_hat = obj.expected_score(jax.lax.stop_gradient(logits), spec.ids, spec.values,
                               renormalize=renormalize)
    return loss, {"loss": loss, "ce": ce, "mse": mse,
                  "y_hat_mean": jnp.sum(y_hat * mb.sample_mask) / jnp.maximum(den.rows, 1.0)}

  return Loss(denominators, fn, "tract")


@dataclasses.dataclass(frozen=True)
class RLLossConfig:
  """Static knobs of the RL losses (see config_lib's `rl` block)."""
  beta: float = 0.0
  lam: float = 1.0
  renormalize: bool = False
  aggregation: str = "token-mean"
  policy_loss: str = "reinforce"
  clip_eps: float = 0.2
  clip_eps_high: float | None = None  # upper PPO clip (None: clip_eps)
  score_temperature: float = 1.0
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  # Columns of the response region at the end of every row (rl.max_response_len + 1 in the
  # rollout's layout): token log-probs are computed there only. 0 = every column.
  response_width: int = 0


class RealDenominators(NamedTuple):
  """Full-batch denominators of the REAL loss: the policy-gradient term's (tokens or rows of
  `pg_keep`), the refinement term's (rows), and the valid rows the metrics average over."""
  pg: jax.Array
  refine: jax.Array
  valid_rows: jax.Array


def real_objective(score_tokens, cfg: RLLossConfig) -> Loss:
  """The REAL loss (`objectives.real_loss` in its (sum, denominator) form).

  Rows in `pg_keep` enter the CoT policy-gradient term; rows in `refine_keep` (those that
  reached the delimiter) enter the refinement term beta * [(y_hat - y*)^2 + lam * -log pi(y*)].
  Plus the optional KL (to `ref_lp`) and entropy terms on the CoT tokens of `pg_keep` rows.

  Denominators. "token-mean" / "sequence-mean" (the authors' layout): the refinement term is a
  mean over the `refine_keep` rows. "sequence-sum" (the exact estimator, objectives' module
  docstring): both terms are divided by the number of sampled rows (`pg_keep`), the estimator
  `(1/B) sum_i [A_i grad log pi(c_i) + beta grad r_i]`: a row without a valid score has a
  constant reward (the format penalty), so its grad r_i is 0 but it still counts in B. Dividing
  by the valid rows only would reweight E[grad r | valid] and bias the gradient whenever rows
  truncate (tests/test_train.py enumerates such rollouts exactly).
  """
  spec, cands = score_reading(score_tokens)
  agg = cfg.aggregation

  def denominators(batch) -> RealDenominators:
    pg_den, pg_rows = obj.real_loss_denominators(batch.cot_mask, sample_mask=batch.pg_keep,
                                                 aggregation=agg)
    valid = jnp.sum(batch.refine_keep)
    return RealDenominators(pg_den, pg_rows if agg == "sequence-sum" else valid, valid)

  def fn(graphdef, params, mb, den):
    lp, logits = forward(graphdef, params, mb.tokens, mb.mask, mb.score_pos,
                         cfg.response_width, candidates=cands)
    common = dict(renormalize=cfg.renormalize, aggregation=agg,
                  temperature=cfg.score_temperature, target_token_ids=mb.target_id,
                  policy_loss=cfg.policy_loss,
                  old_cot_log_probs=mb.old_lp if cfg.policy_loss == "ppo" else None,
                  clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high)
    args = (lp, mb.cot_mask, mb.adv, logits, mb.target, spec.ids, spec.values)
    pg_sums, _ = obj.real_loss_sums(*args, sample_mask=mb.pg_keep, **common)
    ref_sums, aux = obj.real_loss_sums(*args, sample_mask=mb.refine_keep, **common)
    sums = obj.RealLossSums(pg_sum=pg_sums.pg_sum, pg_count=pg_sums.pg_count,
                            sq_err_sum=ref_sums.sq_err_sum, nll_sum=ref_sums.nll_sum,
                            seq_count=ref_sums.seq_count)
    pg, refine = obj.real_loss_terms(sums, beta=cfg.beta, lam=cfg.lam,
                                     denominators=(den.pg, den.refine))
    loss = pg + refine
    seq = jnp.maximum(den.valid_rows, 1.0)  # statistics are means over the valid rows
    metrics = {
        "pg_loss": pg,
        "refine_loss": refine,
        "mse": ref_sums.sq_err_sum / seq,
        "nll_target": ref_sums.nll_sum / seq,
        "y_hat_mean": aux["expected_score"] / seq,
        "score_mass": aux["score_mass"] / seq,
    }
    loss = loss + _regularisers(graphdef, params, mb, lp, den.pg, cfg, metrics)
    metrics["loss"] = loss
    return loss, metrics

  return Loss(denominators, fn, "real")


def _regularisers(graphdef, params, mb, lp, pg_den, cfg: RLLossConfig, metrics):
  extra = 0.0
  if cfg.kl_coef:
    kl = obj.kl_penalty(lp, mb.ref_lp, mb.cot_mask, estimator=cfg.kl_estimator,
                        aggregation=cfg.aggregation, sample_mask=mb.pg_keep,
                        denominator=pg_den)
    metrics["kl"] = kl
    extra = extra + cfg.kl_coef * kl
  if cfg.entropy_coef:
    ent = token_entropies(graphdef, params, mb.tokens, mb.mask)
    h = obj.masked_aggregate(ent, mb.cot_mask, aggregation=cfg.aggregation,
                             sample_mask=mb.pg_keep, denominator=pg_den)
    metrics["entropy"] = h
    extra = extra - cfg.entropy_coef * h
  return extra


def grpo_objective(cfg: RLLossConfig) -> Loss:
  """Standard RL: policy gradient on the CoT and the sampled score token (binary reward)."""
  agg = cfg.aggregation

  def denominators(batch):
    pg_den, _ = obj.real_loss_denominators(batch.cot_mask, sample_mask=batch.pg_keep,
                                           aggregation=agg)
    return pg_den

  def fn(graphdef, params, mb, den):
    lp, _ = forward(graphdef, params, mb.tokens, mb.mask, mb.score_pos,
                    cfg.response_width)
    loss, _ = obj.policy_gradient_loss(
        lp, mb.cot_mask, mb.adv,
        old_log_probs=mb.old_lp if cfg.policy_loss == "ppo" else None,
        policy_loss=cfg.policy_loss, clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
        aggregation=agg,
        sample_mask=mb.pg_keep, denominator=den)
    metrics = {"pg_loss": loss}
    loss = loss + _regularisers(graphdef, params, mb, lp, den, cfg, metrics)
    metrics["loss"] = loss
    return loss, metrics

  return Loss(denominators, fn, "grpo")


# ---------------------------------------------------------------------------------------------
# The step


def batch_shardings(batch_example: Any, mesh: Mesh) -> Any:
  """Batch over the mesh's (data, fsdp) axes, every other dimension replicated (a pytree like
  `batch_example`)."""
  return jax.tree.map(lambda v: shd.batch_sharding(mesh, np.ndim(v)), batch_example)


def _split_micro(x: jax.Array, num_micro: int, mesh: Mesh) -> jax.Array:
  """[B, ...] -> [M, B/M, ...] with micro-batch m = rows m, m+M, ... (no data movement)."""
  b = x.shape[0]
  y = x.reshape((b // num_micro, num_micro) + x.shape[1:])
  y = jnp.swapaxes(y, 0, 1)
  spec = shd.logical_to_spec((None, "batch") + (None,) * (x.ndim - 1))
  return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


def nan_updates(debug) -> tuple[int, int]:
  """(first 1-based step, count) of the updates `debug.nan_update_step` /
  `debug.nan_update_count` make NaN (tests only; (0, ...) = none)."""
  return int(debug.nan_update_step), int(debug.nan_update_count)


def _apply_update(tx: optax.GradientTransformation, nan_update_at: int | tuple[int, int], state,
                  grads, l, metrics):
  """The optimiser update from a step's summed gradients, loss and metrics: skipped (state
  kept, counted) when the loss, the gradient or the update is not finite. `grads` are those of
  the trainable parameters (`state_lib.split_trainable`); the frozen ones pass through."""
  params, frozen = state_lib.split_trainable(state["params"])
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(l) & jnp.isfinite(grad_norm)
  # Zero non-finite gradients before the optimizer so no NaN reaches its state; the where
  # below then keeps the old state anyway.
  safe_grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
  updates, new_opt = tx.update(safe_grads, state["opt_state"], params)
  first, count = (nan_update_at, 1) if isinstance(nan_update_at, int) else nan_update_at
  if first:
    hit = (state["step"] >= first - 1) & (state["step"] < first - 1 + count)
    updates = jax.tree.map(lambda u: jnp.where(hit, jnp.nan, u), updates)
  new_params = optax.apply_updates(params, updates)
  # The update itself must be finite too (a NaN learning rate gives a finite loss and
  # gradient but NaN parameters): check the updates and the new optimizer state.
  floats = lambda t: [x for x in jax.tree.leaves(t) if jnp.issubdtype(x.dtype, jnp.floating)]
  ok = ok & jnp.isfinite(optax.tree.norm(updates)) & jnp.isfinite(
      optax.tree.norm(floats(new_opt)))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = {
      "params": state_lib.merge_trainable(keep(new_params, params), frozen),
      "opt_state": keep(new_opt, state["opt_state"]),
      "step": state["step"] + 1,
      "rng": state["rng"],
      "skipped": state["skipped"] + jnp.where(ok, 0, 1).astype(jnp.int32),
  }
  metrics = dict(metrics)
  metrics.update(loss=l, grad_norm=grad_norm, applied=ok.astype(jnp.float32),
                 skipped=new_state["skipped"])
  return new_state, metrics


def make_train_step(loss: Loss, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    mesh: Mesh, state_shardings: Any, batch_example: Batch, *,
                    num_micro: int = 1, donate: bool = True,
                    nan_update_at: int | tuple[int, int] = 0):
  """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and donation.

  Args:
    loss: a `Loss` (additive over micro-batches).
    graphdef: the model's GraphDef (static).
    tx: the optax transformation (clipping + AdamW).
    mesh: the device mesh; state_shardings: from `state.state_shardings`.
    batch_example: a typed batch (arrays or ShapeDtypeStructs) giving the fields and ranks.
    num_micro: micro-batches per step (gradient accumulation); must divide the batch.
    donate: donate the input state's buffers.
    nan_update_at: tests only (`nan_updates(config.debug)`): the update of this 1-based step
      (or of `(first, count)` steps in a row) is NaN, as a NaN learning rate makes it (finite
      loss and gradient).

  Returns:
    The jitted step. metrics (replicated scalars): the loss's metrics, "grad_norm" (before
    clipping), "applied" (1 if the update was finite and applied), "skipped" (running count).
  """
  b_shard = batch_shardings(batch_example, mesh)
  rep = shd.replicated(mesh)

  def step(state, batch):
    with shd.activation_sharding(mesh):
      params, frozen = state_lib.split_trainable(state["params"])  # LoRA: adapters | base
      den = loss.denominators(batch)
      grad_fn = jax.value_and_grad(
          lambda p, mb: loss.fn(graphdef, state_lib.merge_trainable(p, frozen), mb, den),
          has_aux=True)
      if num_micro == 1:
        (l, metrics), grads = grad_fn(params, batch)
      else:
        micro = jax.tree.map(lambda x: _split_micro(x, num_micro, mesh), batch)

        def body(carry, mb):
          g_acc, l_acc, m_acc = carry
          (l, m), g = grad_fn(params, mb)
          return (jax.tree.map(jnp.add, g_acc, g), l_acc + l,
                  jax.tree.map(jnp.add, m_acc, m)), None

        first = jax.tree.map(lambda x: x[0], micro)
        m_shape = jax.eval_shape(lambda: grad_fn(params, first)[0][1])
        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape))
        (grads, l, metrics), _ = jax.lax.scan(body, zeros, micro)
      return _apply_update(tx, nan_update_at, state, grads, l, metrics)

  return jax.jit(step, in_shardings=(state_shardings, b_shard),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,) if donate else ())


class AccumulatingStep:
  """One optimiser step over micro-batches of different shapes (token-budget micro-batches).

  `step(state, full, micro) -> (state, metrics)`: `full` is the whole mini-batch (host arrays;
  only its masks are read, for the denominators), `micro` a list of (response width, micro-batch)
  whose rows together are `full`'s rows that count (any order, any padding rows with zero
  weight). Each micro-batch's gradient comes from a function jitted once per shape, with the
  loss `loss_for_width(width)` (its `response_width`) and the full mini-batch's denominators,
  so the sum over micro-batches is the step `make_train_step` takes on `full`; then the same
  optimiser update (`_apply_update`), jitted with donation of the state.
  """

  def __init__(self, loss_for_width: Callable[[int], Loss], graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, mesh: Mesh, state_shardings: Any, *,
               nan_update_at: int | tuple[int, int] = 0):
    self.loss_for_width, self.graphdef, self.mesh = loss_for_width, graphdef, mesh
    self._den = jax.jit(lambda batch: loss_for_width(0).denominators(batch))
    self._grads: dict[tuple, Any] = {}
    self._zeros_fn = None
    self._m_shape = None  # the metrics' shapes (scalars), traced once
    self._apply = jax.jit(functools.partial(_apply_update, tx, nan_update_at),
                          out_shardings=(state_shardings, shd.replicated(mesh)),
                          donate_argnums=(0,))

  def _grad_fn(self, width: int, mb: Batch):
    key = (width,) + tuple(np.shape(x) for x in jax.tree.leaves(mb))
    if key not in self._grads:
      loss, graphdef, mesh = self.loss_for_width(width), self.graphdef, self.mesh

      def accumulate(full_params, mb, den, acc):
        with shd.activation_sharding(mesh):
          params, frozen = state_lib.split_trainable(full_params)
          (l, m), g = jax.value_and_grad(
              lambda p: loss.fn(graphdef, state_lib.merge_trainable(p, frozen), mb, den),
              has_aux=True)(params)
          return (jax.tree.map(jnp.add, acc[0], g), acc[1] + l, jax.tree.map(jnp.add, acc[2], m))

      self._grads[key] = jax.jit(accumulate, donate_argnums=(3,))
    return self._grads[key]

  @property
  def compiled_shapes(self) -> int:
    """Micro-batch shapes compiled so far (the bound the caller's widths set)."""
    return len(self._grads)

  def __call__(self, state, full: Batch, micro: list[tuple[int, Batch]]):
    den = self._den(shd.put_batch(full, self.mesh))
    params = state["params"]
    placed = [(w, shd.put_batch(mb, self.mesh)) for w, mb in micro]
    if self._m_shape is None:
      w0, mb0 = placed[0]
      loss0 = self.loss_for_width(w0)
      self._m_shape = jax.eval_shape(lambda p, mb: loss0.fn(self.graphdef, p, mb, den)[1],
                                     params, mb0)
    acc = self._zeros(state_lib.split_trainable(params)[0], self._m_shape)
    for width, mb in placed:
      acc = self._grad_fn(width, mb)(params, mb, den, acc)
    return self._apply(state, *acc)

  def _zeros(self, params, m_shape):
    if self._zeros_fn is None:
      self._zeros_fn = jax.jit(lambda p: (jax.tree.map(jnp.zeros_like, p),
                                          jnp.zeros((), jnp.float32)))
    grads, l = self._zeros_fn(params)
    return grads, l, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
