"""LoRA on the stacked layers: exact at init, equal to the dense update, trains only adapters."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from real_jax import models
from real_jax import sharding as shd
from real_jax.models import qwen3
from real_jax.train import config_lib
from real_jax.train import state as state_lib

CFG = models.get_preset("tiny").model.replace(vocab_size=96)
LORA = CFG.replace(lora_rank=3, lora_alpha=6.0)
pytestmark = pytest.mark.usefixtures("fast_compiles_module")  # compile time dominates
_forward = jax.jit(qwen3.forward_logits, static_argnums=0)  # one compile per model graph


def _tokens(rows=3, length=11, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, CFG.vocab_size, (rows, length)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[0, :4] = False  # one left-padded row
  return jnp.asarray(tokens), jnp.asarray(mask)


def _adapted(seed=1, scale=0.3):
  """A LoRA model whose B are random (an adapter that changes the output)."""
  _, base = models.init_params(CFG, seed=0)
  graphdef, params = models.add_lora(LORA, base, seed=seed)
  key = jax.random.key(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, x: scale * jax.random.normal(jax.random.fold_in(key, hash(models.param_path(kp))
                                                                 % 2**31), x.shape, x.dtype)
      if models.param_path(kp).endswith("_lora_b") else x, params)
  return graphdef, base, params


def test_fresh_adapters_give_the_base_logits_exactly():
  graphdef0, base = models.init_params(CFG, seed=0)
  graphdef, params = models.add_lora(LORA, base, seed=5)
  names = set(params["layers"].keys())
  for t in qwen3.LORA_TARGETS:  # every projection, layer axis leading, B zero
    a, b = params["layers"][f"{t}_lora_a"][...], params["layers"][f"{t}_lora_b"][...]
    w = params["layers"][t][...]
    n = qwen3.LORA_INPUT_AXES[t]
    assert a.shape == w.shape[:1 + n] + (3,) and b.shape == (w.shape[0], 3) + w.shape[1 + n:]
    assert not np.any(np.asarray(b)) and np.any(np.asarray(a))
  assert {f"{t}_lora_{x}" for t in qwen3.LORA_TARGETS for x in "ab"} <= names
  tokens, mask = _tokens()
  np.testing.assert_array_equal(_forward(graphdef, params, tokens, mask),
                                _forward(graphdef0, base, tokens, mask))


def test_adapter_equals_the_dense_update_in_logits_and_gradients():
  """x W + (alpha/r)(x A) B == x (W + (alpha/r) A B): logits, and the gradient with respect to
  A and B through the adapter path equals that through the merged dense weights."""
  lora = LORA  # the scanned block (the trainer's path)
  graphdef, base_params, params = _adapted()
  base_graphdef, _ = models.abstract_model(CFG)
  merged_cfg, merged = models.merge_lora(lora, params)
  assert merged_cfg.lora_rank == 0 and "q_proj_lora_a" not in merged["layers"]
  dense_graphdef, _ = models.abstract_model(merged_cfg)
  tokens, mask = _tokens()
  ours = _forward(graphdef, params, tokens, mask)
  dense = _forward(dense_graphdef, merged, tokens, mask)
  base = _forward(base_graphdef, base_params, tokens, mask)
  assert float(jnp.abs(ours - base).max()) > 1e-2  # the adapters change the output
  np.testing.assert_allclose(ours, dense, atol=2e-5)

  adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
  target = jax.nn.one_hot(tokens, CFG.vocab_size)

  def loss_adapter(a):
    logits = qwen3.forward_logits(graphdef, nnx.merge_state(base, a), tokens, mask)
    return jnp.sum(jax.nn.log_softmax(logits) * target * mask[..., None])

  def loss_dense(a):
    _, p = models.merge_lora(lora, nnx.merge_state(base, a))
    return jnp.sum(jax.nn.log_softmax(qwen3.forward_logits(dense_graphdef, p, tokens, mask))
                   * target * mask[..., None])

  g1, g2 = jax.jit(jax.grad(loss_adapter))(adapters), jax.jit(jax.grad(loss_dense))(adapters)
  for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(g1)[0],
                               jax.tree_util.tree_flatten_with_path(g2)[0]):
    scale = float(jnp.abs(y).max())  # float32 sums in two association orders: error ~ scale
    assert float(jnp.abs(x).max()) > 0, models.param_path(path)
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-4 * scale, err_msg=models.param_path(path))


def test_optimizer_state_holds_only_the_adapters():
  _, _, params = _adapted(scale=0.05)
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  tx = state_lib.make_optimizer(lr=1e-2, steps=3, weight_decay=0.1)
  state, sh = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
  adapters = nnx.split_state(params, nnx.LoRAParam, ...)[0]
  n_adapter = len(jax.tree.leaves(adapters))
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0]
  assert state_lib.trainable_filter(params) is nnx.LoRAParam
  assert len(moments) == 2 * n_adapter  # Adam's mu and nu of the adapters, nothing else
  shapes = sorted(x.shape for x in jax.tree.leaves(adapters))
  assert sorted(x.shape for x in moments) == sorted(shapes + shapes)
  # The frozen base passing through the trainer's steps bitwise: the QLoRA run below.


def test_lora_config_fields_and_errors():
  c = config_lib.load_config("configs/synthetic.py:runlocal")
  c.unlock()
  c.model.lora.rank = 4
  c.model.lora.targets = "q_proj, v_proj"
  c.lock()
  fields = config_lib.lora_fields(c)
  assert fields == {"lora_rank": 4, "lora_alpha": 16.0, "lora_targets": ("q_proj", "v_proj"),
                    "quantize": ""}
  cfg = config_lib.preset_model(c)
  _, abstract = models.abstract_model(cfg)
  assert sorted(k for k in abstract["layers"].keys() if "_lora_" in k) == [
      "q_proj_lora_a", "q_proj_lora_b", "v_proj_lora_a", "v_proj_lora_b"]
  c.unlock()
  c.model.lora.targets = "q_proj,qkv"
  c.lock()
  with pytest.raises(config_lib.ConfigError, match="config.model.lora.targets='q_proj,qkv'"):
    config_lib.validate(c, 1)
  with pytest.raises(ValueError, match="lora_targets"):
    CFG.replace(lora_rank=2, lora_targets=())
  c.unlock()
  c.model.lora.targets = "all"
  c.model.lora.rank = 0
  c.model.lora.quantize = "int8"
  c.lock()
  with pytest.raises(config_lib.ConfigError, match="model.lora.quantize='int8' stores the frozen"):
    config_lib.validate(c, 1)


def test_qlora_run_resumes_keeps_the_base_exports_grades_and_logs(shared, warm, tmp_path,
                                                                   monkeypatch):
  """REAL with QLoRA (int8 frozen projections) from a full-fine-tuning checkpoint, whose
  weights become the frozen base (KL to it), a LoRA warm-up whose adapters RL continues,
  logging to W&B offline and rollouts.jsonl: a killed
  and resumed run equals the uninterrupted one (metrics and rollouts.jsonl); the final base is
  the starting checkpoint's, quantised, bitwise; the merged export computes the adapter model's
  logits in transformers; Judge.from_workdir grades as Judge.from_hf on the export; the W&B run
  directory's record stream holds the scalars, the tables and the config; notebook 02 shows the
  rollouts."""
  import torch
  from transformers import AutoModelForCausalLM

  import real_jax
  from real_jax import main as main_lib
  from real_jax.train import checkpoint as ckpt_lib
  from real_jax.train import runner
  from real_jax.train.metrics import read_metrics
  from real_jax.tools import export_hf
  from run_helpers import tiny_config
  from test_judging import _records
  from test_tracking import check_tracking, tb_rollout_texts
  from real_jax.train.config_lib import ConfigError

  over = {"init.checkpoint": warm[0], "warmup.steps": 2, "eval.at_end": False, "rl.steps": 2,
          "checkpoint.every": 1, "model.lora.rank": 4, "model.lora.alpha": 8.0,
          "model.lora.quantize": "int8", "rl.kl_coef": 0.05, "rl.lr": 3e-3,
          "rl.log_samples_every": 1, "log.tensorboard": True}
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  main_lib.run(tiny_config(shared, "real", **{**over, "log.wandb.project": "real-jax-tests",
                                               "eval.at_end": True}), a)
  with pytest.raises(runner.SimulatedKill):
    main_lib.run(tiny_config(shared, "real", **over, **{"debug.stop_after": 1}), b)
  main_lib.run(tiny_config(shared, "real", **over), b)  # resumes at update 1
  ra, rb = read_metrics(a, "rl"), read_metrics(b, "rl")
  assert [r["step"] for r in rb] == [1, 2]
  skip = {"time", "time_rollout", "time_scoring", "time_update", "gen_tokens_per_s"}
  for x, y in zip(ra, rb):
    for k in x:
      if k not in skip and not isinstance(x[k], str):
        assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), (x["step"], k)
  # The LoRA warm-up trained the adapters and RL continues them (fresh adapters would start RL
  # at the base, KL exactly 0); the KL is to the frozen base.
  assert read_metrics(a, "warmup")[-1]["step"] == 2 and all(r["kl"] > 0 for r in ra)
  # The resumed run's TensorBoard was rebuilt from the JSONL files: every update's rollouts.
  assert sorted(t[1] for t in tb_rollout_texts(b)) == [1, 2]
  rollouts = lambda d: [json.loads(line) for line in open(os.path.join(d, "rollouts.jsonl"))]
  assert len(rollouts(a)) == len(rollouts(b)) == 2 * 8  # the resumed run continues the file
  for x, y in zip(rollouts(a), rollouts(b)):
    assert {k: v for k, v in x.items() if not isinstance(v, float)} == {
        k: v for k, v in y.items() if not isinstance(v, float)}
    for k, v in x.items():
      if isinstance(v, float):
        assert v == pytest.approx(y[k], rel=1e-6, abs=1e-7), k

  run = json.load(open(os.path.join(a, "run.json")))
  cfg = models.Qwen3Config(**run["model"])
  assert cfg.lora_rank == 4 and cfg.quantize == "int8"
  graphdef, abstract = models.abstract_model(cfg)
  _, _, final = ckpt_lib.restore_run_params(a, abstract)
  base_cfg = models.Qwen3Config(**json.load(open(os.path.join(warm[0], "run.json")))["model"])
  _, start = ckpt_lib.restore_run_params(warm[0], models.abstract_model(base_cfg)[1])[1:]
  adapters, frozen = nnx.split_state(final, nnx.LoRAParam, ...)
  start_flat = {models.param_path(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(start)[0]}
  for path, x in jax.tree_util.tree_flatten_with_path(frozen)[0]:
    name = models.param_path(path)
    t = name.split("/")[-1].removesuffix("_scale")
    if t in qwen3.LORA_TARGETS:  # stored int8: the start's weight quantised, bitwise
      q, scale = qwen3.quantize_int8(start_flat[f"layers/{t}"], qwen3.LORA_INPUT_AXES[t])
      want = scale if name.endswith("_scale") else q
    else:
      want = start_flat[name]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(want), err_msg=name)
  assert any(np.any(np.asarray(x)) for p, x in jax.tree_util.tree_flatten_with_path(adapters)[0]
             if models.param_path(p).endswith("_lora_b"))  # the adapters trained

  out = str(tmp_path / "hf")
  assert export_hf.main(["--workdir", a, "--out", out]) == 0
  tokens, _ = _tokens(rows=2, length=9)
  ours = np.asarray(qwen3.forward_logits(graphdef, final, tokens, jnp.ones(tokens.shape, bool)))
  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  with torch.no_grad():
    theirs = hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  records = _records(shared, 3)
  ga = real_jax.Judge.from_workdir(a).grade(records, greedy=True, max_new_tokens=48)
  gb = real_jax.Judge.from_hf(out).grade(records, greedy=True, max_new_tokens=48)
  for x, y in zip(ga, gb):
    assert x.cot == y.cot
    np.testing.assert_allclose(x.y_hat, y.y_hat, rtol=1e-4, atol=1e-5)

  check_tracking(a, ra, monkeypatch, group_size=4, max_cot=56)

  # A full fine-tuning config cannot start from the adapters' checkpoint: one config error.
  with pytest.raises(ConfigError, match="holds LoRA adapters .rank 4, alpha 8, targets q_proj"):
    main_lib.run(tiny_config(shared, "real", **{"init.checkpoint": a, "warmup.steps": 0}),
                 str(tmp_path / "c"))


def test_qlora_int8_weights_within_the_quantiser_error_and_merge():
  """QLoRA: each target stored int8 with a scale per output channel; dequantized within
  scale / 2 of the float weight; the model computes with the dequantized weights (logits equal
  the float LoRA model whose targets are those dequantized weights); merging folds the adapters
  into the dequantized weights."""
  graphdef, _, params = _adapted()
  qcfg = LORA.replace(quantize="int8")
  qgraphdef, qparams = models.quantize_params(qcfg, params)
  layers, qlayers = params["layers"], qparams["layers"]
  deq = {}
  for t in qwen3.LORA_TARGETS:
    q, scale = qlayers[t][...], qlayers[f"{t}_scale"][...]
    w = np.asarray(layers[t][...])
    assert q.dtype == jnp.int8 and scale.shape == (w.shape[0],) + w.shape[1 + qwen3.LORA_INPUT_AXES[t]:]
    d = np.asarray(qwen3.dequantize({t: q, f"{t}_scale": scale}, t, stacked=True))
    bound = np.expand_dims(np.asarray(scale), tuple(range(1, 1 + qwen3.LORA_INPUT_AXES[t])))
    bound = bound / 2 + 1e-7
    assert np.all(np.abs(d - w) <= bound), t
    assert np.max(np.abs(d - w)) > 0  # it is quantised
    deq[t] = d
  # The int8 model = the float LoRA model with the dequantized weights.
  same = jax.tree_util.tree_map_with_path(
      lambda kp, x: deq.get(models.param_path(kp).split("/", 1)[-1], x), params)
  tokens, mask = _tokens()
  np.testing.assert_allclose(_forward(qgraphdef, qparams, tokens, mask),
                             _forward(graphdef, same, tokens, mask), atol=2e-5)
  plain_cfg, merged = models.merge_lora(qcfg, qparams)
  assert plain_cfg.quantize == "" and plain_cfg.lora_rank == 0
  np.testing.assert_allclose(
      _forward(models.abstract_model(plain_cfg)[0], merged, tokens, mask),
      _forward(qgraphdef, qparams, tokens, mask), atol=2e-5)
