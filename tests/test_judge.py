"""Judge prompts, score tokens and output parsing (real_jax.judge)."""
import json
import os
import random

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from real_jax.judge import prompts, scores

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "judge_data")

# --- tokenizers built at test time (offline) -------------------------------------------------

SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus():
  rng = random.Random(0)
  words = ("the response is correct good answer feedback overall score so result accurate clear "
           "helpful think").split()
  out = []
  for _ in range(300):
    fb = " ".join(rng.choice(words) for _ in range(8))
    out.append(f"{fb}. So the overall score is {rng.randint(1, 5)}")
    out.append(f"{fb} [RESULT] {rng.randint(1, 5)}")
    out.append(f"The response is correct. {rng.randint(0, 100)} and {rng.randint(0, 9)}")
  return out


def _wrap(tok):
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                               unk_token="<unk>")
  hf.chat_template = CHAT
  return hf


def _byte_level(qwen_digits: bool):
  tok = Tokenizer(models.BPE())
  if qwen_digits:  # Qwen2/3 style: every digit its own pre-token, the space before it separate
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  else:  # GPT-2 style: " 4" can be a single token
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return _wrap(tok)


def _metaspace():
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS))
  return _wrap(tok)


@pytest.fixture(scope="module")
def tokenizers_by_kind():
  return {"gpt2_bpe": _byte_level(False), "qwen_bpe": _byte_level(True), "metaspace": _metaspace()}


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False)


# --- prompts ----------------------------------------------------------------------------------

def _fc_rows():
  with open(os.path.join(FIXTURES, "new_feedback_collection.json")) as f:
    return json.load(f)


def test_prompt_layout_from_fields():
  row = _fc_rows()[0]
  text = prompts.build_judge_prompt(row, output_format="score_phrase")
  lines = text.split("\n")
  # Section headers in the Prometheus order, each followed by the field's text.
  headers = ["###Task Description:", "###The instruction to evaluate:", "###Response to evaluate:",
             "###Reference Answer (Score 5):", "###Score Rubrics:", "###Feedback:"]
  pos = [lines.index(h) for h in headers]
  assert pos == sorted(pos) and pos[0] == 0 and lines[-1] == "###Feedback:"
  assert lines[pos[1] + 1] == row["orig_instruction"]
  assert lines[pos[2] + 1] == row["orig_response"]
  assert lines[pos[3] + 1] == row["orig_reference_answer"]
  assert lines[pos[4] + 1] == f"[{row['orig_criteria']}]"
  for k in range(1, 6):
    assert lines[pos[4] + 1 + k] == f"Score {k}: {row[f'orig_score{k}_description']}"
  # The format instruction matches the output format, and only that one appears.
  rule3 = [l for l in lines if l.startswith("3. ")]
  assert len(rule3) == 1 and "So the overall score is (an integer number between 1 and 5)" in rule3[0]
  assert "[RESULT]" not in text
  text_r = prompts.build_judge_prompt(row, output_format="result")
  assert "[RESULT] (an integer number between 1 and 5)" in text_r
  assert "So the overall score is" not in text_r
  # The two formats differ only in rules 3 and 4.
  diff = [(a, b) for a, b in zip(text.split("\n"), text_r.split("\n")) if a != b]
  assert [a[:2] for a, _ in diff] == ["3.", "4."]


def test_prompt_from_prebuilt_instruction_matches_fields():
  for row in _fc_rows()[:2]:
    from_fields = prompts.build_judge_prompt(row)
    prebuilt_only = {"instruction": row["instruction"]}  # the stock prompt with its [RESULT] line
    assert prompts.build_judge_prompt(prebuilt_only) == from_fields
  # stray quote / comma around the prompt (seen in released eval files)
  row = _fc_rows()[1]
  assert prompts.build_judge_prompt({"instruction": '"' + row["instruction"] + '",\n'}) == \
      prompts.build_judge_prompt(row)
  with pytest.raises(ValueError, match="Prometheus layout"):
    prompts.build_judge_prompt({"instruction": "Rate this answer from 1 to 5."})


def test_prompt_without_reference_drops_section():
  row = dict(_fc_rows()[0], orig_reference_answer="")
  text = prompts.build_judge_prompt(row)
  assert "###Reference Answer" not in text and "a reference answer that gets" not in text


def test_target_text_and_strip_suffix():
  assert prompts.build_target_text("Good points.", 4) == "Good points. So the overall score is 4"
  assert prompts.build_target_text("Good points.", 2, "result") == "Good points. [RESULT] 2"
  assert prompts.build_target_text("", 5) == "So the overall score is 5"
  for bad in (0, 6):
    with pytest.raises(ValueError):
      prompts.build_target_text("x", bad)
  assert prompts.strip_score_suffix("Nice. So the overall score is 4. [RESULT] 4") == ("Nice.", 4)
  assert prompts.strip_score_suffix("Feedback: Weak. [RESULT] 2") == ("Weak.", 2)
  assert prompts.strip_score_suffix("No score here.") == ("No score here.", None)
  assert prompts.strip_score_suffix("Odd. [RESULT] 9") == ("Odd.", None)


def test_render_chat_and_thinking_switch(tokenizers_by_kind):
  tok = tokenizers_by_kind["qwen_bpe"]
  ids = prompts.render_chat(tok, "Grade this.")
  assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
  text_default = prompts.render_chat_text(tok, "Grade this.")
  text_off = prompts.render_chat_text(tok, "Grade this.", enable_thinking=False)
  text_on = prompts.render_chat_text(tok, "Grade this.", enable_thinking=True)
  assert text_off.startswith("<|im_start|>user\nGrade this.<|im_end|>\n<|im_start|>assistant\n")
  assert "<think>" in text_off and "<think>" not in text_on  # explicit switch reaches the template
  assert "<think>" not in text_default  # default: the flag is not passed (the authors' prompts)
  assert tok.decode(ids) == text_default
  no_template = _wrap(Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
  no_template.chat_template = None
  with pytest.raises(ValueError, match="chat template"):
    prompts.render_chat(no_template, "x")


# --- score tokens -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2_bpe", "qwen_bpe", "metaspace"])
@pytest.mark.parametrize("fmt", ["score_phrase", "result"])
def test_resolve_score_tokens(tokenizers_by_kind, kind, fmt):
  tok = tokenizers_by_kind[kind]
  st = scores.resolve_score_tokens(tok, fmt)
  assert st.values == (1.0, 2.0, 3.0, 4.0, 5.0) and len(set(st.token_ids)) == 5
  assert st.eos_id == tok.convert_tokens_to_ids("<|im_end|>")
  for k, t in enumerate(st.token_ids, start=1):
    assert tok.decode([t]).strip() == str(k)
  # Independent check: in a full target, the token right after the delimiter ids is the digit.
  delim = prompts.OutputFormat(fmt).delimiter
  for k in range(1, 6):
    ids = _ids(tok, f"Some feedback here. {delim} {k}")
    d = list(st.delimiter_ids)
    starts = [i for i in range(len(ids)) if ids[i:i + len(d)] == d]
    assert starts, (tok.convert_ids_to_tokens(ids), tok.convert_ids_to_tokens(d))
    assert ids[starts[0] + len(d)] == st.token_ids[k - 1] and len(ids) == starts[0] + len(d) + 1
    assert tok.decode(d).strip() == delim


def test_resolve_kinds_differ_where_expected(tokenizers_by_kind):
  qwen = tokenizers_by_kind["qwen_bpe"]
  st = scores.resolve_score_tokens(qwen)
  # Digit-splitting tokenizer: bare digits after a separate space token.
  assert [qwen.convert_ids_to_tokens(t) for t in st.token_ids] == list("12345")
  assert qwen.convert_ids_to_tokens(st.delimiter_ids[-1]) == "Ġ"
  meta = tokenizers_by_kind["metaspace"]
  st = scores.resolve_score_tokens(meta)
  assert all(p.startswith("\u2581") for p in meta.convert_ids_to_tokens(list(st.delimiter_ids)))


def test_reject_multi_token_digits():
  # Digits normalised to words and encoded character by character: "4" -> "f","o","u","r".
  words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
  letters = sorted(set("".join(words) + "abcdefghijklmnopqrstuvwxyzSTR[].") | {"\u2581"})
  vocab = {c: i for i, c in enumerate(SPECIALS + letters)}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tok.normalizer = normalizers.Sequence([normalizers.Replace(str(d), w) for d, w in enumerate(words)])
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  with pytest.raises(ValueError, match=r"decode to 'one', not '1'"):
    scores.resolve_score_tokens(_wrap(tok))


def test_reject_digit_merged_with_delimiter():
  # No pre-tokenizer: BPE merges across spaces, so "is 4" ends up inside one token.
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  lines = [f"The response is correct. So the overall score is {k}" for k in range(1, 6)] * 50
  tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS))
  with pytest.raises(ValueError, match="cannot be used for judge scores"):
    scores.resolve_score_tokens(_wrap(tok))


def test_reject_unknown_digits():
  vocab = {w: i for i, w in enumerate(SPECIALS + "The response is correct. So the overall score".split())}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  with pytest.raises(ValueError, match="no tokens of its own"):
    scores.resolve_score_tokens(_wrap(tok))


# --- parsing ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen_st(tokenizers_by_kind):
  tok = tokenizers_by_kind["qwen_bpe"]
  return tok, scores.resolve_score_tokens(tok)


@pytest.mark.parametrize("kind", ["gpt2_bpe", "qwen_bpe", "metaspace"])
def test_parse_edge_cases(tokenizers_by_kind, kind):
  tok = tokenizers_by_kind[kind]
  st = scores.resolve_score_tokens(tok)
  eos = st.eos_id
  enc = lambda s: _ids(tok, s)  # noqa: E731
  n_delim = len(st.delimiter_ids)

  ok = enc("The answer is good. So the overall score is 4") + [eos]
  p = scores.parse_generation(ok, st)
  assert (p.status, p.score, p.found_delimiter) == ("ok", 4, True)
  assert p.cot_end == p.score_pos == len(ok) - 2 and ok[p.cot_end] == st.token_ids[3]
  assert ok[p.cot_end - n_delim:p.cot_end] == list(st.delimiter_ids)
  assert p.eos_pos == len(ok) - 1 and p.n_valid == len(ok)

  p = scores.parse_generation(enc("The answer is good.") + [eos], st)
  assert (p.status, p.found_delimiter, p.score, p.score_pos) == ("no_delimiter", False, None, -1)

  for bad in ("0", "6"):
    p = scores.parse_generation(enc(f"Fine. So the overall score is {bad}") + [eos], st)
    assert (p.status, p.score, p.found_delimiter) == ("bad_score", None, True)
  p = scores.parse_generation(enc("Fine. So the overall score is 10") + [eos], st)
  assert p.status == "bad_score" and p.score is None

  trailing = enc("Fine. So the overall score is 3.") + [eos]
  p = scores.parse_generation(trailing, st)
  assert (p.status, p.score, p.n_trailing) == ("ok", 3, 1)

  truncated = enc("The answer is good and I keep going")
  p = scores.parse_generation(truncated, st)
  assert (p.status, p.found_delimiter, p.eos_pos) == ("truncated", False, -1)

  # The sampler stopped right after the delimiter (its last token may be a lone space token).
  stopped_full = enc("The answer is good. So the overall score is 2")[:-1]
  p = scores.parse_generation(stopped_full, st)
  assert (p.status, p.found_delimiter, p.cot_end) == ("delimiter_only", True, len(stopped_full))
  assert p.usable

  twice = enc("Hmm. So the overall score is 2 but wait. So the overall score is 5") + [eos]
  p = scores.parse_generation(twice, st)
  assert (p.status, p.score) == ("ok", 2)  # first occurrence wins
  assert p.cot_end < len(twice) // 2

  # Padding after EOS is ignored; `length` cuts the valid part.
  padded = ok + [0, 0, 0]
  assert scores.parse_generation(padded, st) == scores.parse_generation(ok, st)
  p = scores.parse_generation(ok + ok, st, length=len(ok))
  assert p.score == 4 and p.n_valid == len(ok)
  # Delimiter after EOS does not count.
  after_eos = enc("Nothing.") + [eos] + enc(" So the overall score is 4")
  assert scores.parse_generation(after_eos, st).status == "no_delimiter"


def test_parse_delimiter_at_start(qwen_st):
  tok, st = qwen_st
  ids = _ids(tok, "So the overall score is 3") + [st.eos_id]
  p = scores.parse_generation(ids, st)
  assert (p.status, p.score) == ("ok", 3)


def test_parse_generation_over_padded_rows(qwen_st):
  """First delimiter wins, EOS ends the search, a row stopped at the delimiter is found; rows
  given as a right-padded array with their lengths (the sampler's layout)."""
  tok, st = qwen_st
  eos = st.eos_id
  texts = ["Good. So the overall score is 4", "nothing here",
           "Hmm. So the overall score is 2 and So the overall score is 5", "So the overall score is 1"]
  seqs = [_ids(tok, t) + [eos] for t in texts]
  seqs.append(_ids(tok, "stops after So the overall score is 3")[:-1])  # stopped at the delimiter
  T = max(map(len, seqs)) + 3
  arr = np.zeros((len(seqs), T), np.int32)
  for i, s in enumerate(seqs):
    arr[i, :len(s)] = s
  lengths = np.array([len(s) for s in seqs])
  parsed = [scores.parse_generation(arr[i], st, length=int(lengths[i])) for i in range(len(seqs))]
  host = {"found": np.array([int(p.found_delimiter) for p in parsed]),
          "score": np.array([p.score or 0 for p in parsed])}
  assert host["found"].tolist() == [1, 0, 1, 1, 1]
  assert host["score"].tolist()[:4] == [4, 0, 2, 1]


def test_build_target_ids_checks_tokenisation(qwen_st):
  tok, st = qwen_st
  ids = prompts.build_target_ids(tok, "Clear and correct.", 5, score_tokens=st)
  assert ids[-1] == st.eos_id and ids[-2] == st.token_ids[4]
  p = scores.parse_generation(ids, st)
  assert (p.status, p.score, p.n_trailing) == ("ok", 5, 0)
  # A feedback that already contains the phrase would make the first occurrence win: rejected.
  with pytest.raises(ValueError, match="does not tokenise"):
    prompts.build_target_ids(tok, "So the overall score is 2", 5, score_tokens=st)


def test_parse_text():
  assert scores.parse_text("Good. So the overall score is 4") == scores.ParsedText("ok", "Good.", 4)
  assert scores.parse_text("Good. So the overall score is 4.").score == 4
  for bad in ("0", "6", "10", "4.5", "four"):
    assert scores.parse_text(f"x So the overall score is {bad}").status == "bad_score"
  assert scores.parse_text("A. So the overall score is 2. B. So the overall score is 5").score == 2
  assert scores.parse_text("no score").status == "no_delimiter"
  assert scores.parse_text("Fine [RESULT] 3", "result").score == 3


# The generation-prompt logic of Qwen3's own chat template (tokenizer_config.json of Qwen3-*).
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}")


def test_chat_rendering_equals_transformers_apply_chat_template(tokenizers_by_kind):
  """The rendered prompt ids equal transformers' own apply_chat_template on a Qwen3 template,
  with the flag not passed (the default: how verl / the authors rendered; no think block) and
  passed as False (an empty think block); the batcher's default config renders the former."""
  from real_jax.data import batching
  from real_jax.train import config_lib, data_utils
  tok = tokenizers_by_kind["qwen_bpe"]
  tok.chat_template = QWEN3_TEMPLATE
  text = "###Task Description: grade the response. ###Feedback: "
  msgs = [{"role": "user", "content": text}]

  def ref(**kw):
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)

  think = _ids(tok, "<think>\n\n</think>\n\n")
  assert prompts.render_chat(tok, text) == ref()
  assert prompts.render_chat(tok, text, enable_thinking=False) == ref(enable_thinking=False)
  assert prompts.render_chat(tok, text, enable_thinking=True) == ref(enable_thinking=True)
  assert ref(enable_thinking=False) == ref() + think  # the two settings really differ
  flag = data_utils.thinking_flag(config_lib.base_config())
  assert flag is None
  b = batching.JudgeBatcher([{"prompt": text, "target": 3.0, "target_int": 3}], tok,
                            batching.BatchConfig(batch_size=1, buckets=(64,),
                                                 enable_thinking=flag),
                            process_index=0, process_count=1)
  row = next(b)
  assert row["prompt_tokens"][0][row["prompt_mask"][0].astype(bool)].tolist() == ref()
