"""Score tokens from the tokenizer, and parsing of generated judge outputs on token ids.

Score tokens are never hard-coded (docs/architecture.md, A2): `resolve_score_tokens` encodes
``"<context> <delimiter> <d>"`` for each label d of the score scale (`judge.scales`; default
1..5) after three different contexts, and requires, in each, that the encodings share a prefix
and differ in exactly one final token that decodes to the label, with the same ids in every
context. That final token is the score token *as it appears
after the delimiter in generated text*: "4" after a separate "Ġ" token (Qwen-style digit
splitting), "Ġ4" (GPT-2 style) or "▁4" (SentencePiece). The shared prefix minus the context's own
tokens is the delimiter's ids in context (`delimiter_ids`; for Qwen-style tokenizers it ends with
the lone space token). A tokenizer that fails a check gets a ValueError naming the check and
showing the pieces.

Parsing (`parse_generation`), on the generated token ids only (no prompt):

* Only tokens before the first EOS are searched (EOS itself counts in `n_valid`).
* The FIRST occurrence of the delimiter wins (a second "So the overall score is" later is ignored).
* `cot_end` = index just past the delimiter = the position of the score token (if there is one).
  "The CoT" for the policy-gradient term is ``tokens[:cot_end]``: the feedback *including the
  delimiter*, excluding the score token. The score distribution is read from the logits computed
  at response index ``cot_end - 1`` (they predict token ``cot_end``); in a sequence
  ``[prompt (Lp tokens) | response]`` that is absolute position ``Lp + cot_end - 1``. If the
  delimiter is not found, `cot_end` = `n_valid` and `score_pos` = -1: there is no score
  position; don't read one.
* status:
  - "ok": delimiter, then one of the scale's score tokens. Anything after it (".", text) is allowed and
    counted in `n_trailing`; a missing EOS after the score is allowed too.
  - "delimiter_only": the tokens end right after the delimiter with no EOS (the sampler stopped at
    the delimiter). Usable: the score distribution at `cot_end - 1` is well defined.
  - "bad_score": the token after the delimiter is not a score token (on 1..5: "0", "6", "10",
    ".", EOS...). A score token followed by another digit ("1" "0" for 10 with digit-splitting
    tokenizers) is bad_score too.
  - "no_delimiter": EOS without the delimiter before it.
  - "truncated": no EOS and no delimiter (ran out of tokens).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from real_jax.judge.formats import OutputFormat, as_output_format, encode_text
from real_jax.judge.scales import ScoreScale, as_scale

__all__ = ["STATUSES", "USABLE_STATUSES", "ScoreTokens", "resolve_score_tokens",
    "ParsedGeneration", "parse_generation", "ParsedText", "parse_text"]

STATUSES = ("ok", "delimiter_only", "bad_score", "no_delimiter", "truncated")
USABLE_STATUSES = ("ok", "delimiter_only")


@dataclasses.dataclass(frozen=True)
class ScoreTokens:
  """Token ids of the score digits and of the delimiter, for one tokenizer and output format.

  Attributes:
    token_ids: ids of the scale's scores (e.g. 1..5) as generated right after the delimiter.
    values: the score values (e.g. 1., 2., 3., 4., 5.), aligned with `token_ids`.
    delimiter_ids: the delimiter's ids as tokenised inside generated text, after a space.
    eos_id: end of turn / sequence id that ends a generation.
    output_format: "score_phrase" or "result".
    delimiter_variants: every tokenisation of the delimiter the parser accepts (the first is
      `delimiter_ids`; others: after a newline, at the start of the text), all followed by the
      same score tokens.
    continuation_ids: ids that, right after a score token, make it a longer number (e.g. "0" in
      "10" when digits are split into single tokens).
  """

  token_ids: tuple[int, ...]
  values: tuple[float, ...]
  delimiter_ids: tuple[int, ...]
  eos_id: int
  output_format: str = OutputFormat.SCORE_PHRASE.value
  delimiter_variants: tuple[tuple[int, ...], ...] = ()
  continuation_ids: tuple[int, ...] = ()
  candidates: tuple[tuple[int, ...], ...] = ()

  @property
  def multi_token(self) -> bool:
    """Some score is more than one token ("10" as "1" "0" with digit-splitting tokenizers):
    its probability is then read over its tokens (`models.score_candidates`)."""
    return any(len(c) > 1 for c in self.candidates)

  @property
  def sequences(self) -> tuple[tuple[int, ...], ...]:
    """Each score's tokens after the delimiter, aligned with `values`."""
    return self.candidates or tuple((t,) for t in self.token_ids)

  @property
  def paths(self) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, int], ...]]:
    """(paths, where): the token sequences to teacher-force after the delimiter (the scores
    that are no prefix of another score: for 1-10 with split digits "10" and "2".."9"; "1" is
    read on the path of "10"), and for each score k the (path, length) that holds it."""
    seqs = self.sequences
    paths = tuple(s for s in seqs if not any(o != s and o[:len(s)] == s for o in seqs))
    where = tuple(next((p, len(s)) for p, path in enumerate(paths) if path[:len(s)] == s)
                  for s in seqs)
    return paths, where

  def score_of(self, token_id: int) -> int | None:
    try:
      return int(self.values[self.token_ids.index(int(token_id))])
    except ValueError:
      return None

  def values_of(self, token_ids, default: float) -> np.ndarray:
    """[N] float32 score value of each token id (`default` where it is not a score token):
    the one lookup from sampled tokens to scores (rollout rewards, the standard readout)."""
    if self.multi_token:
      raise ValueError(f"scores {self.scale.spec} are several tokens each: a token is no score "
                       "(read them with models.score_candidates)")
    lut = dict(zip(self.token_ids, self.values))
    return np.array([lut.get(int(t), default) for t in np.asarray(token_ids).reshape(-1)],
                    np.float32)

  @property
  def scale(self) -> ScoreScale:
    """The score scale these tokens write."""
    return ScoreScale(tuple(str(int(v)) for v in self.values))

  @property
  def variants(self) -> tuple[tuple[int, ...], ...]:
    return self.delimiter_variants or (self.delimiter_ids,)


def _common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
  out = []
  for items in zip(*seqs):
    if all(x == items[0] for x in items):
      out.append(items[0])
    else:
      break
  return out


def _pieces(tokenizer, ids: Sequence[int]) -> list[str]:
  if hasattr(tokenizer, "convert_ids_to_tokens"):
    return list(tokenizer.convert_ids_to_tokens(list(ids)))
  return [tokenizer.id_to_token(i) for i in ids]


def _decode(tokenizer, ids: Sequence[int]) -> str:
  return tokenizer.decode(list(ids))


def _resolve_in_context(tokenizer, ctx: str, joiner: str, delim: str, labels: Sequence[str]):
  """(delimiter_ids, score_ids, ctx_ids) from `ctx + joiner + delim + " " + d`, or ValueError."""
  ctx_ids = encode_text(tokenizer, ctx) if ctx else []
  seqs = [encode_text(tokenizer, f"{ctx}{joiner}{delim} {d}") for d in labels]
  probes = []
  if any(len(d) > 1 for d in labels):  # "10".."15" share "1": single digits mark where scores start
    probes = [encode_text(tokenizer, f"{ctx}{joiner}{delim} {d}") for d in "0123456789"]
  prefix = _common_prefix(seqs + probes)
  problems = []
  score_ids = []
  for d, ids in zip(labels, seqs):
    suffix = ids[len(prefix):]
    if not suffix:
      problems.append(f"score {d} has no tokens of its own after the delimiter (the scores "
                      "tokenise alike: are its digits unknown to the tokenizer?)")
      continue
    text = _decode(tokenizer, suffix).strip().lstrip("\u2581").strip()
    if text != d:
      problems.append(f"score {d}: the tokens after the shared prefix are "
                      f"{_pieces(tokenizer, suffix)}, which decode to {text!r}, not {d!r}")
    score_ids.append(tuple(suffix))
  if problems:
    raise ValueError("; ".join(problems))
  if len(set(score_ids)) != len(labels):
    raise ValueError(f"scores {','.join(labels)} do not map to {len(labels)} distinct tokens: "
                     f"{score_ids}")
  if prefix[:len(ctx_ids)] != ctx_ids:
    raise ValueError(f"the context {ctx!r} tokenises differently when followed by the "
                     f"delimiter ({_pieces(tokenizer, ctx_ids)} vs {_pieces(tokenizer, prefix)})")
  delim_ids = prefix[len(ctx_ids):]
  if not delim_ids:
    raise ValueError("the delimiter has no tokens of its own in context")
  return tuple(delim_ids), tuple(score_ids), list(ctx_ids)


def _complete_prefixes(sequences) -> bool:
  """Whether some score's tokens are a proper prefix of another's ("1" of "10")."""
  return any(a != b and b[:len(a)] == a for a in sequences for b in sequences)


_CONTEXTS = ("The response is correct.", "Good.", "it is fine")


def resolve_score_tokens(tokenizer, output_format: OutputFormat | str = OutputFormat.SCORE_PHRASE, *,
                         eos_id: int | None = None,
                         scale: ScoreScale | str | None = None) -> ScoreTokens:
  """Score and delimiter token ids for `tokenizer` (HF tokenizer or raw `tokenizers.Tokenizer`)
  and the score `scale` (default 1-5).

  Raises ValueError (naming the tokenizer and the failed check) if a score of the scale is not
  exactly one token after the delimiter, if the scores are not distinct tokens, or if the
  delimiter cannot be isolated from the text before it.
  """
  fmt = as_output_format(output_format)
  scale = as_scale(scale)
  labels = scale.labels
  delim = fmt.delimiter
  if eos_id is None:
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
      raise ValueError("tokenizer has no eos_token_id; pass eos_id=")
  # The score must be one token after the delimiter whatever text precedes it: check several
  # contexts and require the same delimiter and score ids in all of them.
  results = []
  for ctx in _CONTEXTS:
    try:
      results.append(_resolve_in_context(tokenizer, ctx, " ", delim, labels))
    except ValueError as e:
      name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
      raise ValueError(
          f"tokenizer {name!r} cannot be used for judge scores {scale.spec} with "
          f"output_format={fmt.value!r}: each score must tokenise the same way right after the "
          f"delimiter {delim!r}. After {ctx!r}: {e}") from None
  delim_ids, seqs, ctx_ids = results[0]
  for ctx, (d_ids, s_ids, _) in zip(_CONTEXTS[1:], results[1:]):
    if (d_ids, s_ids) != (delim_ids, seqs):
      raise ValueError(
          f"the delimiter/score tokenisation depends on the preceding text: after "
          f"{_CONTEXTS[0]!r}: {_pieces(tokenizer, delim_ids + sum(seqs, ()))}, after {ctx!r}: "
          f"{_pieces(tokenizer, d_ids + sum(s_ids, ()))}")
  ctx = _CONTEXTS[0]
  variants = [delim_ids]
  for v_ctx, joiner in ((ctx, "\n"), ("", "")):  # after a newline; at the start of the text
    try:
      v_delim, v_scores, _ = _resolve_in_context(tokenizer, v_ctx, joiner, delim, labels)
    except ValueError:
      continue
    unk = getattr(tokenizer, "unk_token_id", None)
    if v_scores == seqs and v_delim not in variants and (unk is None or unk not in v_delim):
      variants.append(v_delim)
  if any(int(eos_id) in s for s in seqs):
    raise ValueError(f"eos id {eos_id} is one of the score tokens {seqs}")
  # Ids that turn a score into a longer number ("1" then "0" for 10).
  cont = set()
  for k, d in enumerate(labels):
    head = ctx_ids + list(delim_ids) + list(seqs[k])
    for e in "0123456789":
      ids = encode_text(tokenizer, f"{ctx} {delim} {d}{e}")
      if ids[:len(head)] == head and len(ids) == len(head) + 1:
        cont.add(ids[-1])
  multi = any(len(s) > 1 for s in seqs)
  if not multi and _complete_prefixes(seqs):
    raise ValueError(f"scores {scale.spec}: a score token is a prefix of another: {seqs}")
  return ScoreTokens(token_ids=tuple(int(s[0]) for s in seqs), values=scale.values,
                     delimiter_ids=tuple(int(t) for t in delim_ids), eos_id=int(eos_id),
                     output_format=fmt.value,
                     delimiter_variants=tuple(tuple(int(t) for t in v) for v in variants),
                     continuation_ids=tuple(sorted(int(t) for t in cont)),
                     candidates=(tuple(tuple(int(t) for t in s) for s in seqs) if multi else ()))


@dataclasses.dataclass(frozen=True)
class ParsedGeneration:
  """The parse of one generated token sequence (see the module docstring for the definitions)."""

  status: str
  found_delimiter: bool
  cot_end: int           # index just past the delimiter (= score position); n_valid if not found
  score: int | None      # the sampled score (a label of the scale), if status == "ok"
  score_pos: int         # = cot_end if found_delimiter else -1
  eos_pos: int           # index of the first EOS, or -1
  n_valid: int           # tokens up to and including the first EOS (all tokens if none)
  n_trailing: int = 0    # tokens between the score token and EOS/end (e.g. a trailing ".")
  score_len: int = 1     # the score's tokens (2 for "10" as "1" "0")

  @property
  def usable(self) -> bool:
    """Delimiter found and nothing wrong at the score position: the CoT can be scored."""
    return self.status in USABLE_STATUSES


def _find_first(seq: Sequence[int], variants: Sequence[Sequence[int]]) -> tuple[int, int]:
  """(start, length) of the earliest occurrence of any variant in seq (longest on ties);
  (-1, 0) if none."""
  best = (-1, 0)
  seq = tuple(seq)
  for v in variants:
    v = tuple(v)
    L = len(v)
    for i in range(len(seq) - L + 1):
      if seq[i:i + L] == v:
        if best[0] < 0 or i < best[0] or (i == best[0] and L > best[1]):
          best = (i, L)
        break
  return best


def parse_generation(token_ids: Sequence[int], score_tokens: ScoreTokens, *,
                     length: int | None = None) -> ParsedGeneration:
  """Parses generated token ids (response only; `length` = number of valid tokens, the rest pad)."""
  ids = [int(t) for t in (token_ids[:length] if length is not None else token_ids)]
  eos_pos = ids.index(score_tokens.eos_id) if score_tokens.eos_id in ids else -1
  region = ids[:eos_pos] if eos_pos >= 0 else ids
  n_valid = eos_pos + 1 if eos_pos >= 0 else len(ids)
  start, L = _find_first(region, score_tokens.variants)
  if start < 0:
    status = "no_delimiter" if eos_pos >= 0 else "truncated"
    return ParsedGeneration(status, False, n_valid, None, -1, eos_pos, n_valid)
  cot_end = start + L
  if cot_end >= len(region):
    status = "bad_score" if eos_pos >= 0 else "delimiter_only"
    return ParsedGeneration(status, True, cot_end, None, cot_end, eos_pos, n_valid)
  cont = score_tokens.continuation_ids
  # The longest score whose tokens follow the delimiter and are not continued into a longer
  # number ("1" "0" is 10, not 1; "1" "7" on a 1-10 scale is no score).
  for k in sorted(range(len(score_tokens.values)), key=lambda k: -len(score_tokens.sequences[k])):
    seq = score_tokens.sequences[k]
    end = cot_end + len(seq)
    if tuple(region[cot_end:end]) == seq and not (end < len(region) and region[end] in cont):
      return ParsedGeneration("ok", True, cot_end, int(score_tokens.values[k]), cot_end, eos_pos,
                              n_valid, n_trailing=len(region) - end, score_len=len(seq))
  return ParsedGeneration("bad_score", True, cot_end, None, cot_end, eos_pos, n_valid)


# --- text level --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ParsedText:
  status: str          # "ok", "bad_score", "no_delimiter", "delimiter_only"
  feedback: str        # text before the first delimiter (whole text if none)
  score: int | None


def parse_text(text: str, output_format: OutputFormat | str = OutputFormat.SCORE_PHRASE, *,
               scale: ScoreScale | str | None = None) -> ParsedText:
  """Text-level parse with the same rules (first delimiter wins; the score must be a label of
  `scale` (default 1-5) standing alone: on 1..5, "4", "4." are ok; "0", "6", "10", "4.5" are
  bad_score). Use for logs and external generations; training uses `parse_generation` on ids."""
  fmt = as_output_format(output_format)
  scale = as_scale(scale)
  idx = text.find(fmt.delimiter)
  if idx < 0:
    return ParsedText("no_delimiter", text.strip(), None)
  feedback = text[:idx].strip()
  rest = text[idx + len(fmt.delimiter):]
  if not rest.strip():
    return ParsedText("delimiter_only", feedback, None)
  m = re.match(r"\s*(\d+(?:\.\d+)?)", rest)
  if m is None:
    return ParsedText("bad_score", feedback, None)
  num = m.group(1)
  if num in scale.labels:
    return ParsedText("ok", feedback, int(num))
  return ParsedText("bad_score", feedback, None)
