"""Tiny random Hugging Face checkpoints (Qwen3, Llama, Mistral), built at test time (no hub)."""

from __future__ import annotations

import os


def _random_norms(model) -> None:
  """Random norm weights too, so a transposed or skipped norm cannot pass."""
  import torch
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))


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
  _random_norms(model)
  model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir


def make_tiny_llama_family(out_dir: str, family: str = "mistral", *, seed: int = 0,
                           **overrides) -> str:
  """A random LlamaForCausalLM or MistralForCausalLM (no q/k norm, untied by default)."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
  config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                           "mistral": (MistralConfig, MistralForCausalLM)}[family]
  kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
            rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=512)
  if family == "mistral":
    kw["sliding_window"] = None  # Mistral-7B-Instruct-v0.2 has no window
  kw.update(overrides)
  torch.manual_seed(seed)
  model = model_cls(config_cls(**kw))
  _random_norms(model)
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir


MISTRAL_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}"
                "{% endif %}{% endfor %}")


def make_sentencepiece_tokenizer(out_dir: str, corpus, vocab_size: int = 400):
  """A Mistral/Llama-style tokenizer (SentencePiece conventions) trained on `corpus`: "▁" marks a
  word start, digits are single tokens split from the "▁" before them (" 4" -> "▁", "4"), <s> /
  </s> / <unk> are ids 1 / 2 / 0, no pad token, and Mistral-Instruct's [INST] chat template.
  Saved with `save_pretrained`; returns the PreTrainedTokenizerFast."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first"),
      pre_tokenizers.Digits(individual_digits=True)])
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
  alphabet = [chr(c) for c in range(33, 127)] + ["\u2581"]
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>")
  hf.chat_template = MISTRAL_CHAT
  os.makedirs(out_dir, exist_ok=True)
  hf.save_pretrained(out_dir)
  return hf
