"""The judge's output formats and the tokenizer basics under prompts and score tokens.

`OutputFormat` names how a judgement ends (its delimiter before the score digit); `encode_text`
and `load_tokenizer` are the one way this project turns text into ids and loads a tokenizer.
This module is the leaf of `real_jax.judge`: `scores` and `prompts` import it, it imports neither.
"""
from __future__ import annotations

import enum
import os

import transformers  # AutoTokenizer is looked up only when needed: it imports torch (~1 s)
from transformers import PreTrainedTokenizerFast

__all__ = ["OutputFormat", "as_output_format", "load_tokenizer", "encode_text"]


class OutputFormat(str, enum.Enum):
  """How the judge ends its output; the delimiter is the text right before the score digit."""

  SCORE_PHRASE = "score_phrase"
  RESULT = "result"

  @property
  def delimiter(self) -> str:
    """The phrase that precedes the score, without surrounding spaces."""
    return _DELIMITERS[self]


_DELIMITERS = {
    OutputFormat.SCORE_PHRASE: "So the overall score is",
    OutputFormat.RESULT: "[RESULT]",
}


def as_output_format(output_format: OutputFormat | str) -> OutputFormat:
  """Accepts an `OutputFormat` or its string value; clear error otherwise."""
  try:
    return OutputFormat(output_format)
  except ValueError:
    raise ValueError(f"Unknown output_format {output_format!r}; expected one of "
                     f"{[f.value for f in OutputFormat]}") from None


def load_tokenizer(path: str):
  """A Hugging Face tokenizer from a local directory (tokenizer.json + tokenizer_config.json).

  Uses `PreTrainedTokenizerFast` directly (AutoTokenizer imports torch when it is installed);
  falls back to AutoTokenizer for tokenizers without a tokenizer.json (e.g. SentencePiece).
  """
  if os.path.isfile(os.path.join(os.fspath(path), "tokenizer.json")):
    return PreTrainedTokenizerFast.from_pretrained(os.fspath(path))
  return transformers.AutoTokenizer.from_pretrained(os.fspath(path))


def encode_text(tokenizer, text: str) -> list[int]:
  """Plain token ids of `text` without special tokens (HF tokenizer or a raw `tokenizers.Tokenizer`)."""
  try:
    out = tokenizer.encode(text, add_special_tokens=False)
  except TypeError:
    out = tokenizer.encode(text)
  if hasattr(out, "ids"):
    out = out.ids
  return [int(t) for t in out]
