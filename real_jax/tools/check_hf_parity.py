"""Checks real_jax against transformers (PyTorch, CPU) on a local Qwen3, Llama or Mistral checkpoint.

  python -m real_jax.tools.check_hf_parity CHECKPOINT_DIR [--dtype float32|bfloat16]

Runs the same batch of random token ids, with left-padded rows, through both
implementations, prints `max_abs_diff=<float>` over the logits at attended
positions and exits non-zero when it exceeds the dtype's tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from real_jax import sharding as shd
from real_jax.layout import positions_from_mask
from real_jax.models import forward_logits
from real_jax.models.hf import load_hf

__all__ = ["TOLERANCE", "tolerance", "make_batch", "hf_logits", "jax_logits", "check", "main"]

# fp32 is absolute; bf16 is relative to the largest reference logit, since bf16
# keeps ~3 significant digits and real checkpoints have logits of order 10-30.
TOLERANCE = {"float32": 1e-4, "bfloat16": 4e-2}


def tolerance(dtype: str, ref_logits: np.ndarray) -> float:
  if dtype == "float32":
    return TOLERANCE[dtype]
  return TOLERANCE[dtype] * max(1.0, float(np.abs(ref_logits).max()))


def make_batch(vocab_size: int, batch: int, length: int, seed: int):
  """Random ids; rows 1.. are left-padded by increasing amounts (row 0 unpadded)."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, vocab_size, size=(batch, length)).astype(np.int32)
  mask = np.ones((batch, length), bool)
  for b in range(1, batch):
    mask[b, : min(length - 1, (b * length) // (batch + 1))] = False
  tokens = np.where(mask, tokens, 0)
  positions = positions_from_mask(mask)
  return tokens, mask, positions


def hf_logits(ckpt_dir: str, dtype: str, tokens, mask, positions) -> np.ndarray:
  import torch
  from transformers import AutoModelForCausalLM
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch_dtype,
                                               attn_implementation="eager")
  model.eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                position_ids=torch.from_numpy(positions.astype(np.int64)))
  return out.logits.float().numpy()


def jax_logits(ckpt_dir: str, dtype: str, tokens, mask, positions) -> np.ndarray:
  _, graphdef, params = load_hf(ckpt_dir, dtype=dtype, param_dtype=dtype)
  fn = jax.jit(forward_logits, static_argnums=0)
  return np.asarray(fn(graphdef, params, tokens, mask, positions), np.float32)


def check(ckpt_dir: str, dtype: str = "float32", batch: int = 4, length: int = 24,
          seed: int = 0) -> tuple[float, float]:
  """Returns (max_abs_diff over attended positions, tolerance)."""
  with open(os.path.join(ckpt_dir, "config.json")) as f:
    vocab = json.load(f)["vocab_size"]
  tokens, mask, positions = make_batch(vocab, batch, length, seed)
  ref = hf_logits(ckpt_dir, dtype, tokens, mask, positions)
  ours = jax_logits(ckpt_dir, dtype, tokens, mask, positions)
  diff = float(np.abs(ref - ours)[mask].max())
  return diff, tolerance(dtype, ref[mask])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint_dir")
  parser.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=24)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  shd.use_cpu_without_accelerator()
  diff, tol = check(args.checkpoint_dir, args.dtype, args.batch, args.length, args.seed)
  print(f"max_abs_diff={diff:.3e}")
  print(f"tolerance={tol:.3e} dtype={args.dtype} -> {'OK' if diff <= tol else 'FAIL'}")
  return 0 if diff <= tol else 1


if __name__ == "__main__":
  sys.exit(main())
