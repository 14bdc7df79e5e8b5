"""The Prometheus absolute-grading judge prompt, its two output formats, and chat rendering.

One template is used everywhere (real datasets and the synthetic task), so that the format
instruction in the prompt always matches the format the parser and the score tokens expect
(the authors' code mixes three variants: docs/architecture.md, A1).

Layout of `build_judge_prompt` (the Prometheus v1 absolute-grading prompt, with rule 3/4 set by
the output format, and no trailing space after the generation cue)::

  ###Task Description:
  An instruction (might include an Input inside it), a response to evaluate, a reference answer ...
  1. Write a detailed feedback that assess the quality of the response strictly based on ...
  2. After writing a feedback, write a score that is an integer between 1 and 5. ...
  3. The output format should look as follows: "Feedback: (write a feedback for criteria) <FORMAT>"
  4. Please do not generate any other opening, closing, and explanations.<FORMAT NOTE>

  ###The instruction to evaluate:
  {instruction}

  ###Response to evaluate:
  {response}

  ###Reference Answer (Score 5):
  {reference_answer}

  ###Score Rubrics:
  [{criteria}]
  Score 1: {score1_description}
  ...
  Score 5: {score5_description}

  ###Feedback:

Output formats (`OutputFormat`):

* ``"score_phrase"`` (default, REAL/TRACT): the model writes its feedback and ends with
  ``So the overall score is N`` (no period). SFT target: ``"{feedback} So the overall score is N"``.
* ``"result"`` (Prometheus): ``"{feedback} [RESULT] N"``.

The generated text starts right after the cue ``###Feedback:`` (and the chat template's assistant
header), so targets do not repeat the word "Feedback:".

If the reference answer is empty, the reference section and the phrase ", a reference answer that
gets a score of 5" are dropped (the Prometheus reference-free variant).

API: `OutputFormat`, `build_judge_prompt(record, *, output_format, template)`,
`render_prompt(JudgeFields, ...)`, `split_prometheus_prompt(text)`, `build_target_text(feedback,
score, output_format)`, `build_target_ids(tokenizer, feedback, score, output_format, *,
score_tokens=None, add_eos=True)`, `strip_score_suffix(text)`, `render_chat(tokenizer, prompt, *,
enable_thinking=None)` / `render_chat_text`, `load_tokenizer(dir)`, `encode_text`.

Records can give the fields (`orig_instruction`, `orig_response`, `orig_reference_answer`,
`orig_criteria`, `orig_score{1..5}_description`, as in Feedback Collection), or only the prebuilt
`instruction` field of the real files (FLASK, MT Bench, Vicuna Bench, TRACT's Feedback Bench):
that prompt is split into its sections (`split_prometheus_prompt`) and rebuilt with the template,
so its stock "[RESULT]" rule-3 line is replaced by the chosen format's line.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from real_jax.judge.formats import OutputFormat, as_output_format, encode_text, load_tokenizer
from real_jax.judge.scales import DEFAULT_SCALE, ScoreScale, as_scale
from real_jax.judge.scores import parse_generation

__all__ = ["PromptTemplate", "PROMETHEUS_ABSOLUTE", "JudgeFields", "format_rubric",
    "clean_prebuilt_instruction", "split_prometheus_prompt", "fields_from_record",
    "render_prompt", "build_judge_prompt", "build_target_text", "strip_score_suffix",
    "render_chat_text", "render_chat", "eos_token_id", "build_target_ids", "thinking_value"]


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """The fixed text of the judge prompt. Every line here is boilerplate shared by all records."""

  task_header: str = "###Task Description:"
  description: str = ("An instruction (might include an Input inside it), a response to evaluate, "
                      "a reference answer that gets a score of 5, and a score rubric representing a "
                      "evaluation criteria are given.")
  description_no_reference: str = ("An instruction (might include an Input inside it), a response "
                                   "to evaluate, and a score rubric representing a evaluation "
                                   "criteria are given.")
  rule1: str = ("1. Write a detailed feedback that assess the quality of the response strictly "
                "based on the given score rubric, not evaluating in general.")
  rule2: str = ("2. After writing a feedback, write a score that is an integer between 1 and 5. "
                "You should refer to the score rubric.")
  rule3: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
      OutputFormat.SCORE_PHRASE.value: (
          '3. The output format should look as follows: "Feedback: (write a feedback for '
          'criteria) So the overall score is (an integer number between 1 and 5)"'),
      OutputFormat.RESULT.value: (
          '3. The output format should look as follows: "Feedback: (write a feedback for '
          'criteria) [RESULT] (an integer number between 1 and 5)"'),
  })
  rule4: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
      OutputFormat.SCORE_PHRASE.value: (
          "4. Please do not generate any other opening, closing, and explanations. End with the "
          "score number itself, without a period."),
      OutputFormat.RESULT.value: (
          "4. Please do not generate any other opening, closing, and explanations."),
  })
  instruction_header: str = "###The instruction to evaluate:"
  response_header: str = "###Response to evaluate:"
  reference_header: str = "###Reference Answer (Score 5):"
  rubric_header: str = "###Score Rubrics:"
  feedback_cue: str = "###Feedback:"

  def __hash__(self):  # Mappings are not hashable; templates are compared by value anyway.
    return hash((self.description, self.rule1, tuple(sorted(self.rule3.items()))))

  def scaled(self, scale: ScoreScale | str | None) -> PromptTemplate:
    """The template for another score scale: rules 2 and 3 name its range ("an integer between
    0 and 4"; "one of 1, 3, 5" for explicit labels) and the reference answer is its top score's.
    The default scale (1-5) returns the template itself, so its prompts are unchanged."""
    scale = as_scale(scale)
    if scale == DEFAULT_SCALE:
      return self
    contiguous = "-" in scale.spec
    between = (f"an integer between {scale.lo} and {scale.hi}" if contiguous
               else f"one of {', '.join(scale.labels)}")
    number = (f"an integer number between {scale.lo} and {scale.hi}" if contiguous
              else f"one of {', '.join(scale.labels)}")
    sub = lambda t: (t.replace("an integer number between 1 and 5", number)
                     .replace("an integer between 1 and 5", between)
                     .replace("a score of 5", f"a score of {scale.hi}")
                     .replace("(Score 5)", f"(Score {scale.hi})"))
    return dataclasses.replace(
        self, description=sub(self.description), rule2=sub(self.rule2),
        rule3={k: sub(v) for k, v in self.rule3.items()},
        reference_header=sub(self.reference_header))

  def boilerplate(self) -> list[str]:
    """Every fixed line of the template (all formats), e.g. to make them single tokens."""
    lines = [self.task_header, self.description, self.description_no_reference, self.rule1,
             self.rule2, *self.rule3.values(), *self.rule4.values(), self.instruction_header,
             self.response_header, self.reference_header, self.rubric_header, self.feedback_cue]
    return list(dict.fromkeys(lines))


PROMETHEUS_ABSOLUTE = PromptTemplate()


@dataclasses.dataclass(frozen=True)
class JudgeFields:
  """The variable parts of a judge prompt. `rubric` is the whole rubric block
  ("[criteria]\\nScore 1: ...\\n...\\nScore 5: ...")."""

  instruction: str
  response: str
  reference_answer: str
  rubric: str


def format_rubric(criteria: str, descriptions: Sequence[str],
                  scale: ScoreScale | str | None = None) -> str:
  """The Prometheus rubric block from a criteria string and one description per score of
  `scale` (default 1-5: five descriptions)."""
  scale = as_scale(scale)
  if len(descriptions) != len(scale.labels):
    raise ValueError(f"need {len(scale.labels)} score descriptions for scores {scale.spec}, got "
                     f"{len(descriptions)}")
  criteria = criteria.strip()
  if not (criteria.startswith("[") and criteria.endswith("]")):
    criteria = f"[{criteria}]"
  lines = [criteria] + [f"Score {k}: {d.strip()}" for k, d in zip(scale.labels, descriptions)]
  return "\n".join(lines)


_SECTION_RE = re.compile(
    r"###The instruction to evaluate:\s*(?P<instruction>.*?)\s*"
    r"###Response to evaluate:\s*(?P<response>.*?)\s*"
    r"(?:###Reference Answer \(Score \d+\):\s*(?P<reference>.*?)\s*)?"
    r"###Score Rubrics:\s*(?P<rubric>.*?)\s*"
    r"(?:###Feedback:.*)?$",
    re.S,
)


def clean_prebuilt_instruction(text: str) -> str:
  """Strips the stray quotes/commas/newlines some released files carry around the prompt."""
  return text.strip().strip('",\n ').strip()


def split_prometheus_prompt(text: str) -> JudgeFields:
  """Splits a prebuilt Prometheus absolute-grading prompt (the `instruction` field of the real
  files) into its sections. Raises ValueError if the layout is not recognised."""
  text = clean_prebuilt_instruction(text)
  m = _SECTION_RE.search(text)
  if m is None:
    raise ValueError("prompt does not have the Prometheus layout (###The instruction to "
                     "evaluate: / ###Response to evaluate: / ###Score Rubrics:)")
  return JudgeFields(instruction=m.group("instruction").strip(),
                     response=m.group("response").strip(),
                     reference_answer=(m.group("reference") or "").strip(),
                     rubric=m.group("rubric").strip())


_FIELD_KEYS = ("orig_instruction", "orig_response", "orig_criteria")


def fields_from_record(record: Mapping[str, Any],
                       scale: ScoreScale | str | None = None) -> JudgeFields:
  """`JudgeFields` from a record: the `orig_*` fields if present (one
  `orig_score{label}_description` per score of `scale`, default 1-5), else the prebuilt
  `instruction`.

  A record that already is a `JudgeFields`-like dict (keys instruction/response/
  reference_answer/rubric) is accepted too.
  """
  if isinstance(record, JudgeFields):
    return record
  scale = as_scale(scale)
  if all(k in record and record[k] is not None for k in _FIELD_KEYS):
    descriptions = []
    for k in scale.labels:
      key = f"orig_score{k}_description"
      if record.get(key) is None:
        raise ValueError(f"record has orig_* fields but no {key!r}")
      descriptions.append(_as_text(record[key]))
    return JudgeFields(instruction=_as_text(record["orig_instruction"]).strip(),
                       response=_as_text(record["orig_response"]).strip(),
                       reference_answer=_as_text(record.get("orig_reference_answer") or "").strip(),
                       rubric=format_rubric(_as_text(record["orig_criteria"]), descriptions,
                                            scale))
  if "rubric" in record and "response" in record and "instruction" in record:
    return JudgeFields(instruction=_as_text(record["instruction"]).strip(),
                       response=_as_text(record["response"]).strip(),
                       reference_answer=_as_text(record.get("reference_answer") or "").strip(),
                       rubric=_as_text(record["rubric"]).strip())
  if record.get("instruction"):
    return split_prometheus_prompt(_as_text(record["instruction"]))
  raise ValueError("record has neither the orig_* fields nor a prebuilt 'instruction' prompt")


def _as_text(x: Any) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  return str(x)


def render_prompt(fields: JudgeFields, *, output_format: OutputFormat | str = OutputFormat.SCORE_PHRASE,
                  template: PromptTemplate = PROMETHEUS_ABSOLUTE,
                  scale: ScoreScale | str | None = None) -> str:
  """The judge prompt text (before the chat template) for `fields`, on `scale` (default 1-5)."""
  fmt = as_output_format(output_format)
  template = template.scaled(scale)
  has_ref = bool(fields.reference_answer.strip())
  parts = [
      template.task_header,
      template.description if has_ref else template.description_no_reference,
      template.rule1,
      template.rule2,
      template.rule3[fmt.value],
      template.rule4[fmt.value],
      "",
      template.instruction_header,
      fields.instruction,
      "",
      template.response_header,
      fields.response,
      "",
  ]
  if has_ref:
    parts += [template.reference_header, fields.reference_answer, ""]
  parts += [template.rubric_header, fields.rubric, "", template.feedback_cue]
  return "\n".join(parts)


def build_judge_prompt(record: Mapping[str, Any] | JudgeFields, *,
                       output_format: OutputFormat | str = OutputFormat.SCORE_PHRASE,
                       template: PromptTemplate = PROMETHEUS_ABSOLUTE,
                       scale: ScoreScale | str | None = None) -> str:
  """The judge prompt for a record (orig_* fields, or a prebuilt `instruction` prompt)."""
  return render_prompt(fields_from_record(record, scale), output_format=output_format,
                       template=template, scale=scale)


def build_target_text(feedback: str, score: int,
                      output_format: OutputFormat | str = OutputFormat.SCORE_PHRASE, *,
                      scale: ScoreScale | str | None = None) -> str:
  """The text the judge should generate after the prompt: feedback, delimiter, score.

  No EOS here: append the tokenizer's EOS *id* (see `build_target_ids`), never an EOS string.
  An empty feedback gives just "So the overall score is N".
  """
  fmt = as_output_format(output_format)
  scale = as_scale(scale)
  score = int(score)
  if not scale.contains(score):
    raise ValueError(f"score must be one of the scores {scale.spec}, got {score}")
  feedback = feedback.strip()
  suffix = f"{fmt.delimiter} {score}"
  return f"{feedback} {suffix}" if feedback else suffix


# --- score suffixes in demonstration feedback (orig_feedback, output, gpt4_feedback) -------------

_SUFFIX_RE = re.compile(r"(?:So the overall score is|\[RESULT\])\s*:?\s*(?P<score>\d+(?:\.\d+)?)?", re.I)


def strip_score_suffix(text: str, scale: ScoreScale | str | None = None
                       ) -> tuple[str, int | None]:
  """Splits demonstration feedback into (CoT text, score it concludes).

  The CoT is the text before the *first* "So the overall score is" or "[RESULT]"; the score is the
  number right after it (if it is a score of `scale`, default 1-5; else None). A leading "Feedback:" is removed.
  Feedback Collection's `output` ("... So the overall score is 4. [RESULT] 4") gives
  ("...", 4).
  """
  text = text.strip()
  if text.lower().startswith("feedback:"):
    text = text[len("feedback:"):].strip()
  m = _SUFFIX_RE.search(text)
  if m is None:
    return text, None
  cot = text[:m.start()].rstrip()
  score = None
  if m.group("score") is not None:
    value = float(m.group("score"))
    if as_scale(scale).contains(value):
      score = int(value)
  return cot, score


# --- chat rendering ------------------------------------------------------------------------------

def _chat_messages(prompt_text: str, system_prompt: str | None) -> list[dict[str, str]]:
  msgs = []
  if system_prompt:
    msgs.append({"role": "system", "content": system_prompt})
  msgs.append({"role": "user", "content": prompt_text})
  return msgs


def _check_chat_template(tokenizer) -> None:
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat "
        "template; judge prompts are rendered with apply_chat_template (use an instruct/chat "
        "tokenizer or set tokenizer.chat_template)")


def _thinking_kwargs(enable_thinking: bool | None) -> dict:
  return {} if enable_thinking is None else {"enable_thinking": bool(enable_thinking)}


def render_chat_text(tokenizer, prompt_text: str, *, enable_thinking: bool | None = None,
                     system_prompt: str | None = None) -> str:
  """The chat-rendered prompt as text (user turn + generation prompt); see `render_chat`."""
  _check_chat_template(tokenizer)
  return tokenizer.apply_chat_template(_chat_messages(prompt_text, system_prompt), tokenize=False,
                                       add_generation_prompt=True,
                                       **_thinking_kwargs(enable_thinking))


def render_chat(tokenizer, prompt_text: str, *, enable_thinking: bool | None = None,
                system_prompt: str | None = None) -> list[int]:
  """Token ids of the chat-rendered judge prompt, ending with the assistant generation prompt.

  `enable_thinking=None` (default) does not pass the flag, so the template renders its default:
  this is how the authors' prompts were built (verl calls `apply_chat_template(messages,
  add_generation_prompt=True)` with no extra arguments), and for Qwen3 it means no <think> block
  after the generation prompt. True / False pass the flag (Qwen3: False appends an empty
  <think></think> block). Handles transformers v5, where `apply_chat_template(tokenize=True)`
  returns a BatchEncoding.
  """
  _check_chat_template(tokenizer)
  out = tokenizer.apply_chat_template(_chat_messages(prompt_text, system_prompt), tokenize=True,
                                      add_generation_prompt=True,
                                      **_thinking_kwargs(enable_thinking))
  if hasattr(out, "keys"):
    out = out["input_ids"]
  out = list(out)
  if out and isinstance(out[0], (list, tuple)):  # batched form
    out = list(out[0])
  return [int(t) for t in out]


def eos_token_id(tokenizer) -> int:
  eos = getattr(tokenizer, "eos_token_id", None)
  if eos is None:
    raise ValueError("tokenizer has no eos_token_id; pass eos_id explicitly")
  return int(eos)


def build_target_ids(tokenizer, feedback: str, score: int,
                     output_format: OutputFormat | str = OutputFormat.SCORE_PHRASE, *,
                     score_tokens=None, add_eos: bool = True, eos_id: int | None = None) -> list[int]:
  """Token ids of the SFT target (`build_target_text`) followed by the EOS id.

  With `score_tokens` (a `ScoreTokens`), checks that the ids end in delimiter + score token (+ EOS),
  i.e. that the target is tokenised the way the parser and the score readout expect.
  """
  scale = score_tokens.scale if score_tokens is not None else None
  ids = encode_text(tokenizer, build_target_text(feedback, score, output_format, scale=scale))
  if score_tokens is not None:
    parsed = parse_generation(ids, score_tokens)
    if parsed.score != int(score) or parsed.score_pos + parsed.score_len != len(ids):
      raise ValueError(f"target for score {score} does not tokenise as <delimiter><score token> "
                       f"at its end (parse: {parsed}); feedback={feedback[-80:]!r}")
  if add_eos:
    ids.append(eos_id if eos_id is not None else eos_token_id(tokenizer))
  return ids


def thinking_value(v) -> bool | None:
  """An `enable_thinking` setting ("" / None, "true" / "false", or a bool from a run.json) as
  the chat template's argument: None (not passed) or the bool."""
  return None if v in ("", None) else v in (True, "true")
