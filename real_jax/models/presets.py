"""Size presets: the exact Hugging Face hyperparameters of Qwen3 and Mistral-7B-Instruct-v0.2,
plus tiny CPU models.

Each preset names the mesh it is meant for; configs may override it. Mesh entries
are (data, fsdp, tensor) sizes, -1 meaning "all remaining devices".
"""

from __future__ import annotations

import dataclasses

from real_jax.models.qwen3 import Qwen3Config

__all__ = ["Preset", "PRESETS", "SIZE_ALIASES", "get_preset"]


@dataclasses.dataclass(frozen=True)
class Preset:
  model: Qwen3Config
  mesh: dict[str, int]
  hardware: str
  hf_name: str | None = None
  num_devices: int = 1  # the chip count the default mesh is planned for


def _qwen3(hidden, inter, layers, heads, tied, kv=8):
  # Shared by every Qwen3 dense size: head_dim 128, 8 kv heads, vocab 151936, theta 1e6.
  return Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                     num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=128,
                     rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                     max_position_embeddings=40960, dtype="bfloat16", param_dtype="float32",
                     remat="full")


PRESETS: dict[str, Preset] = {
    # Tests: tiny shapes that divide a (2, 4) fsdp x tensor mesh.
    "tiny": Preset(
        Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=8, num_kv_heads=4, head_dim=16, rope_theta=10_000.0),
        mesh={"data": -1}, hardware="CPU (tests)"),
    # The CPU demo judge: ~0.9M parameters with a ~512-token vocabulary.
    "tiny-1m": Preset(
        Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
                    num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10_000.0),
        mesh={"data": 1}, hardware="1 CPU device"),
    # The sampler/update benchmark model (29M parameters, 32k vocabulary).
    "cpu-29m": Preset(
        Qwen3Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_layers=4,
                    num_heads=8, num_kv_heads=4, head_dim=64),
        mesh={"data": 1}, hardware="1 CPU device"),
    "qwen3-0.6b": Preset(_qwen3(1024, 3072, 28, 16, tied=True), mesh={"data": -1},
                         hardware="1-8 GPUs/TPUs, data parallel", hf_name="Qwen/Qwen3-0.6B", num_devices=8),
    "qwen3-1.7b": Preset(_qwen3(2048, 6144, 28, 16, tied=True), mesh={"fsdp": -1},
                         hardware="1-8 GPUs/TPUs, FSDP", hf_name="Qwen/Qwen3-1.7B", num_devices=8),
    "qwen3-4b": Preset(_qwen3(2560, 9728, 36, 32, tied=True), mesh={"fsdp": 8},
                       hardware="8 GPUs/TPUs, FSDP", hf_name="Qwen/Qwen3-4B", num_devices=8),
    "qwen3-8b": Preset(_qwen3(4096, 12288, 36, 32, tied=False), mesh={"fsdp": 8},
                       hardware="8 GPUs/TPUs, FSDP", hf_name="Qwen/Qwen3-8B", num_devices=8),
    "qwen3-14b": Preset(_qwen3(5120, 17408, 40, 40, tied=False), mesh={"fsdp": 8, "tensor": 2},
                        hardware="16 GPUs/TPUs, FSDP x tensor", hf_name="Qwen/Qwen3-14B", num_devices=16),
    "qwen3-32b": Preset(_qwen3(5120, 25600, 64, 64, tied=False), mesh={"fsdp": 8, "tensor": 2},
                        hardware="16 GPUs/TPUs, FSDP x tensor", hf_name="Qwen/Qwen3-32B", num_devices=16),
}

# Mistral-7B-Instruct-v0.2 (the paper's other judge): Llama-style blocks without q/k norm, 32k
# SentencePiece vocabulary, untied, theta 1e6, no sliding window (v0.1 had 4096).
PRESETS["mistral-7b"] = Preset(
    Qwen3Config(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32,
                num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=32768,
                dtype="bfloat16", param_dtype="float32", remat="full", family="mistral"),
    mesh={"fsdp": -1}, hardware="4-8 GPUs/TPUs, FSDP",
    hf_name="mistralai/Mistral-7B-Instruct-v0.2", num_devices=8)

# Short names used by configs (`configs/prometheus.py:size=8b`).
SIZE_ALIASES = {s: f"qwen3-{s}" for s in ("0.6b", "1.7b", "4b", "8b", "14b", "32b")}


def get_preset(name: str) -> Preset:
  name = SIZE_ALIASES.get(name, name)
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]
