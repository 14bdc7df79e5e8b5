"""Judge prompts (Prometheus absolute grading), score tokens and output parsing.

Four modules, bottom up: `formats` (output formats, the tokenizer loader), `scales` (score
scales: "1-5", "0-4", "1-10"), `scores` (score tokens from the tokenizer, parsing), `prompts`
(the prompt template, targets, chat rendering).

  from real_jax.judge import prompts, scores
  text = prompts.build_judge_prompt(record, output_format="score_phrase")
  ids = prompts.render_chat(tokenizer, text)                  # chat template, generation prompt on
  st = scores.resolve_score_tokens(tokenizer, "score_phrase")  # digit ids from the tokenizer
  parsed = scores.parse_generation(generated_ids, st)          # cot_end, score, status
"""
from real_jax.judge.prompts import (OutputFormat, build_judge_prompt, build_target_ids,
                                    build_target_text, load_tokenizer, render_chat,
                                    render_chat_text)
from real_jax.judge.scales import DEFAULT_SCALE, ScoreScale
from real_jax.judge.scores import (ParsedGeneration, ScoreTokens, parse_generation, parse_text,
                                   resolve_score_tokens)

__all__ = ["OutputFormat", "build_judge_prompt", "build_target_ids", "build_target_text",
           "load_tokenizer",
           "render_chat", "render_chat_text", "ParsedGeneration", "ScoreTokens",
           "parse_generation", "parse_text", "resolve_score_tokens", "ScoreScale",
           "DEFAULT_SCALE"]
