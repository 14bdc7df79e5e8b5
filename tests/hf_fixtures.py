"""Tiny random Hugging Face Qwen3 checkpoints, built at test time (no hub, no network)."""

from __future__ import annotations

import os


def make_tiny_qwen3(out_dir: str, *, seed: int = 0, dtype: str = "float32", **overrides) -> str:
  """Saves a random Qwen3ForCausalLM with `save_pretrained` and returns its directory."""
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=512)
  kw.update(overrides)
  torch.manual_seed(seed)
  model = Qwen3ForCausalLM(Qwen3Config(**kw))
  # Random norm weights too, so a transposed or skipped norm cannot pass.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir
