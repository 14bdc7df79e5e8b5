r"""Full fine-tuning vs LoRA vs QLoRA: train-step time and memory, side by side in one process.

  python benchmarks/lora.py                                # cpu-29m, float32, this CPU
  python benchmarks/lora.py --preset qwen3-1.7b --dtype bfloat16 --rows 8 --seq 1024  # a GPU

The same warm-up (SFT) train step (`steps.make_train_step`, AdamW, global-norm clipping) on the
same random batch (`--rows` x `--seq` tokens, every token trained), for three parameter sets of
the same model (`--preset`, random init, seed 0):
  * full: every weight trains (the default, `model.lora.rank=0`);
  * LoRA: rank `--rank` adapters (alpha 2 x rank) on every projection, only they train, the
    base frozen in `--dtype` (`model.lora.rank`);
  * QLoRA: the same adapters over int8 projections with a float32 scale per output channel
    (`model.lora.quantize=int8`).
Per variant: the median step time of `--repeats` calls after one untimed (compiling) call, the
variants alternating call by call; the train state's bytes (parameters + optimizer state, as
held between steps); and the compiled step's peak (XLA memory analysis: arguments + outputs +
temporaries, minus the donated aliases). Ratios against full fine-tuning are printed beside each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from real_jax import models  # noqa: E402
from real_jax import sharding as shd  # noqa: E402
from real_jax.train import state as state_lib, steps as steps_lib  # noqa: E402
from real_jax.train.batch import LMBatch  # noqa: E402


def _bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _peak(step, state, batch) -> int:
  m = step.lower(state, batch).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="cpu-29m")
  p.add_argument("--dtype", default="float32", help="compute and frozen-weight dtype")
  p.add_argument("--rows", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  base_cfg = models.get_preset(a.preset).model.replace(dtype=a.dtype, param_dtype=a.dtype)
  lora_cfg = base_cfg.replace(lora_rank=a.rank, lora_alpha=2.0 * a.rank)
  _, base = models.init_params(base_cfg, seed=0)
  variants = {"full": models.abstract_model(base_cfg)[:1] + (base,),
              "LoRA": models.add_lora(lora_cfg, base, seed=0)}
  qcfg = lora_cfg.replace(quantize="int8")
  variants["QLoRA"] = models.quantize_params(qcfg, variants["LoRA"][1])
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, base_cfg.vocab_size, (a.rows, a.seq)).astype(np.int32)
  ones = np.ones((a.rows, a.seq), np.float32)
  batch = LMBatch(tokens=tokens, mask=ones.astype(bool), loss_mask=ones,
                  score_pos=np.full((a.rows,), a.seq - 2, np.int32),
                  target=np.full((a.rows,), 3.0, np.float32),
                  target_id=np.full((a.rows,), 5, np.int32),
                  sample_mask=np.ones((a.rows,), np.float32))
  tx = state_lib.make_optimizer(lr=1e-4, steps=a.repeats + 1)
  runs = {}
  for name, (graphdef, params) in variants.items():
    state, sh = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
    step = steps_lib.make_train_step(steps_lib.sft_objective(), graphdef, tx, mesh, sh, batch)
    placed = shd.put_batch(batch, mesh)
    runs[name] = {"step": step, "state": state, "batch": placed, "times": [],
                  "state_bytes": _bytes(state["params"]) + _bytes(state["opt_state"]),
                  "opt_bytes": _bytes(state["opt_state"]), "peak": _peak(step, state, placed)}
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"{platform.machine()} cpus={os.cpu_count()}; {a.preset} {a.dtype}, {a.rows} x {a.seq} "
        f"tokens, LoRA rank {a.rank} on every projection; median of {a.repeats} calls; 1-minute "
        f"load {os.getloadavg()[0]:.2f} at start", flush=True)
  for r in runs.values():  # compile + warm-up, untimed
    r["state"], m = r["step"](r["state"], r["batch"])
    jax.block_until_ready(m)
  for _ in range(a.repeats):
    for r in runs.values():
      t0 = time.perf_counter()
      r["state"], m = r["step"](r["state"], r["batch"])
      jax.block_until_ready(m)
      r["times"].append(time.perf_counter() - t0)
  full = runs["full"]
  f_ms = 1e3 * statistics.median(full["times"])
  for name, r in runs.items():
    ms = 1e3 * statistics.median(r["times"])
    mib = lambda b: b / 2 ** 20
    print(f"{name:6s}: step {ms:8.1f} ms ({f_ms / ms:.2f}x full's speed); train state "
          f"{mib(r['state_bytes']):8.1f} MiB ({r['state_bytes'] / full['state_bytes']:.2f}x), of "
          f"which optimizer {mib(r['opt_bytes']):7.1f} MiB; compiled step peak "
          f"{mib(r['peak']):8.1f} MiB ({r['peak'] / full['peak']:.2f}x)")
  print(f"1-minute load {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
  main()
