"""Analytic per-device memory: parameters and Adam state per preset, and per-program estimates.

  python -m real_jax.tools.memory_table        # params + AdamW state per preset, default mesh
  python -m real_jax.tools.plan --config configs/prometheus.py:size=8b --gpu h100:8   # estimate

`program_estimate` adds, per program of a run (the names `real_jax.tools.plan` compiles), the
parts that dominate its memory: sharded parameters, AdamW moments and gradients, the layer
weights FSDP gathers, the residual stream remat keeps, one layer's recomputed activations, the
attention-logit and output-projection blocks, and the sampler's KV cache. Multiplied by a
per-program factor calibrated on the TPU compiles (`calibrate`, from the plan reports in
docs/plan), it is the GPU plan: an estimate, since no GPU compiler runs without a GPU.
Uses abstract shapes and a device-free mesh: nothing is allocated.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from real_jax import sharding as shd
from real_jax.models import PRESETS, abstract_model, param_shardings
from real_jax.models.qwen3 import Qwen3Config
from real_jax.train import data_utils
from real_jax.train import methods as methods_lib
from real_jax.train import settings as settings_lib

__all__ = ["preset_memory", "markdown_table", "program_estimate", "CALIBRATION", "calibrate",
    "calibrated", "main"]


def preset_memory(name: str) -> dict:
  preset = PRESETS[name]
  mesh = shd.abstract_mesh(preset.mesh, preset.num_devices)
  _, abstract = abstract_model(preset.model)
  shardings = param_shardings(abstract, mesh)
  leaves = jax.tree.leaves(abstract)
  shard_leaves = jax.tree.leaves(shardings)
  params = sum(math.prod(x.shape) for x in leaves)
  per_device = sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, shard_leaves))
  return {
      "preset": name, "params": params, "mesh": dict(mesh.shape),
      "devices": preset.num_devices, "param_dtype": preset.model.param_dtype,
      "param_bytes_per_device": per_device,
      # AdamW keeps two moments in the parameter dtype.
      "adam_bytes_per_device": 2 * per_device,
  }


def markdown_table(rows) -> str:
  lines = ["| preset | params | mesh (data, fsdp, tensor) | devices | params / device | Adam state / device |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    m = r["mesh"]
    lines.append(f"| {r['preset']} | {r['params']:,} | ({m['data']}, {m['fsdp']}, {m['tensor']}) | "
                 f"{r['devices']} | {r['param_bytes_per_device'] / 2**30:.2f} GiB | "
                 f"{r['adam_bytes_per_device'] / 2**30:.2f} GiB |")
  return "\n".join(lines)


def _param_bytes(cfg: Qwen3Config, mesh, dtype) -> int:
  """Per-device bytes of the parameters under their shardings, stored in `dtype`."""
  _, abstract = abstract_model(cfg)
  shardings = param_shardings(abstract, mesh)
  return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(dtype).itemsize
             for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def _stored_bytes(cfg: Qwen3Config, mesh, trainable_only: bool = False) -> int:
  """Per-device bytes of the parameters as the model stores them (each array in its own dtype:
  a LoRA model's adapters in float32, QLoRA's int8 projections and their scales); with
  `trainable_only`, of what trains (the adapters of a LoRA model, else every parameter) in
  float32: one AdamW moment or one gradient buffer."""
  _, abstract = abstract_model(cfg)
  shardings = param_shardings(abstract, mesh)
  leaves = jax.tree_util.tree_leaves_with_path(abstract)
  total = 0
  for (path, x), s in zip(leaves, jax.tree.leaves(shardings)):
    is_adapter = "_lora_" in jax.tree_util.keystr(path)
    if trainable_only and cfg.lora_rank and not is_adapter:
      continue
    itemsize = 4 if trainable_only else np.dtype(x.dtype).itemsize
    total += math.prod(s.shard_shape(x.shape)) * itemsize
  return total


def _layer_bytes(cfg: Qwen3Config, itemsize: int, tensor: int) -> int:
  """One decoder layer's weights, gathered over fsdp (still split over tensor)."""
  d, n, k, h, f = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                   cfg.intermediate_size)
  return (2 * d * n * h + 2 * d * k * h + 3 * d * f) * itemsize // tensor


def program_estimate(config, mesh_shape: dict[str, int], attention: str = "chunked"
                     ) -> dict[str, dict[str, int]]:
  """program -> {part: bytes per device} for the programs `plan.programs` builds, with the
  attention backend `attention` (`xla` holds a layer's whole [rows, N, width, width] float32
  logit square; the others at most `attention_chunk` query rows of it). With `model.lora`, the
  parameters are stored as the LoRA / QLoRA model holds them and the AdamW moments and
  gradients are the adapters' only (the calibration factors come from full fine-tuning
  compiles)."""
  c = config
  cfg = PRESETS[c.model.preset].model
  over = {k: v for k, v in (("dtype", c.model.dtype), ("param_dtype", c.model.param_dtype)) if v}
  cfg = cfg.replace(**over, **settings_lib.lora_fields(c))
  mesh = shd.abstract_mesh(mesh_shape, math.prod(mesh_shape.values()))
  data, fsdp, tensor = (mesh_shape.get(a, 1) for a in ("data", "fsdp", "tensor"))
  shards = data * fsdp  # the batch axis
  cb = np.dtype(cfg.dtype).itemsize
  d, n_h, k_h, h, f, v, layers = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                                  cfg.head_dim, cfg.intermediate_size, cfg.vocab_size,
                                  cfg.num_layers)
  heads = max(n_h // tensor, 1)
  params = _stored_bytes(cfg, mesh)
  f32_copy = _stored_bytes(cfg, mesh, trainable_only=True)  # one AdamW moment or gradient buffer
  compute_copy = _param_bytes(cfg.replace(lora_rank=0, quantize=""), mesh, cfg.dtype)
  gathered = 2 * _layer_bytes(cfg, cb, tensor)  # this layer's and the next one's (prefetch)
  chunk = cfg.attention_chunk
  lp = max(data_utils.prompt_buckets(c))
  f32 = 4

  def layer_activations(rows, width, backward):
    """One layer's working set: q/k/v/o, the MLP's three [., F] blocks, float32 norms and the
    [rows, N, chunk, width] float32 attention-logit block (x3 with its backward)."""
    per_token = (2 * (n_h + k_h) * h * cb // tensor + 3 * f * cb // tensor + 4 * d * f32)
    attn = rows * heads * (width if attention == "xla" else min(chunk, width)) * width * f32
    return (rows * width * per_token + attn) * (3 if backward else 1)

  def train(rows, width, micro):
    rows_dev = max(micro // shards, 1)
    return {"params": params, "adam moments": 2 * f32_copy,
            "gradients": 2 * f32_copy,  # accumulated + this micro-batch's
            "gathered layers": gathered,
            "residual stream (remat)": layers * rows_dev * width * d * cb,
            "layer activations": layer_activations(rows_dev, width, True),
            "logit blocks": 3 * rows_dev * 64 * v * f32,
            "batch": rows // shards * width * 6 * f32}

  def sampler(prompts, n, new_tokens):
    g_dev = max(prompts // shards, 1)
    kv_heads = max(k_h // tensor, 1)
    slots = g_dev * lp + g_dev * n * new_tokens
    return {"params": params, "compute-dtype weights": compute_copy,
            "KV cache": slots * layers * 2 * kv_heads * h * cb,
            "prefill activations": layer_activations(g_dev, lp, False),
            "decode logits": 4 * g_dev * n * v * f32}

  def scoring(rows, width):
    rows_dev = max(rows // shards, 1)
    return {"params": params, "gathered layers": gathered,
            "layer activations": layer_activations(rows_dev, width, False),
            "residual stream": 2 * rows_dev * width * d * cb,
            "logit blocks": 2 * rows_dev * 64 * v * f32}

  out = {}
  method = c.method
  if methods_lib.WARMUP_STAGE in methods_lib.stages_for(c):
    w = c.warmup
    out["warmup_step"] = train(w.batch_size, lp + c.data.max_target_len,
                               w.micro_batch_size or w.batch_size)
  stages = methods_lib.stages_for(c)
  final = methods_lib.STAGES.lookup(stages[-1]) if stages else None
  if final is not None and final.loss and final.batch[0] == "train.batch_size":
    t = c.train
    out[f"{method}_step"] = train(t.batch_size, lp + c.data.max_target_len,
                                  t.micro_batch_size or t.batch_size)
  if methods_lib.get_method(method).rl is not None:
    rl = c.rl
    width = lp + rl.max_response_len + 1
    out["rl_step"] = train(rl.mini_batch_size, width, rl.micro_batch_size or rl.mini_batch_size)
    out["rollout_sampler"] = sampler(rl.sample_prompts or rl.prompts_per_step, rl.group_size,
                                     rl.max_response_len)
    out["rollout_scoring"] = scoring(
        rl.score_batch_size or rl.micro_batch_size or rl.mini_batch_size, width)
  if settings_lib.evaluations(c).any:
    out["eval_sampler"] = sampler(c.eval.batch_size, 1, c.eval.max_response_len)
  return out


# program kind -> compiled / analytic, the largest over the TPU compiles of docs/plan/*.json
# (`calibrate`; tests/test_plan.py recomputes it from those reports).
CALIBRATION = {"eval_sampler": 1.05, "rollout_sampler": 1.03, "rollout_scoring": 1.26, "train_step": 1.04}


def calibrate(pairs: list[tuple[str, int, int]]) -> dict[str, float]:
  """program kind -> the largest compiled / analytic ratio over (program, analytic, compiled)
  triples: the factor that makes the estimate cover every compile it was checked against."""
  factors: dict[str, float] = {}
  for name, analytic, compiled in pairs:
    factors[_kind(name)] = max(factors.get(_kind(name), 0.0), compiled / analytic)
  return factors


def calibrated(name: str, analytic: int, factors: dict[str, float]) -> int:
  return int(analytic * factors.get(_kind(name), max(factors.values(), default=1.0)))


def _kind(name: str) -> str:
  """The calibration group of a program: every *_step shares one factor."""
  return "train_step" if name.endswith("_step") else name


def main():
  print(markdown_table([preset_memory(n) for n in PRESETS]))


if __name__ == "__main__":
  main()
