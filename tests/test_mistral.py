"""The Llama/Mistral family end to end: a tiny random MistralForCausalLM with a SentencePiece-style
tokenizer (Mistral's conventions: "▁" word starts, " 4" -> "▁" "4", <s>/[INST] template, no pad)
is judged through the project's own path (`Judge`, `readout.read_batch`), and the score
distribution it reads equals the one computed from transformers' logits."""

import json
import os
import random

import jax
import numpy as np
import pytest

import real_jax
from hf_fixtures import make_sentencepiece_tokenizer, make_tiny_llama_family
from real_jax import layout, readout
from real_jax.judge import prompts

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "judge_data")


def _rows():
  with open(os.path.join(FIXTURES, "new_feedback_collection.json")) as f:
    return [r for r in json.load(f) if isinstance(r, dict)]  # the fixture's malformed row


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
  """Tokenizer and weights in one directory, as a Hugging Face Mistral export."""
  d = str(tmp_path_factory.mktemp("mistral"))
  rows = _rows()
  rng = random.Random(0)
  corpus = [prompts.build_judge_prompt(r) for r in rows]
  corpus += [f"{r['output'].split('[RESULT]')[0]} So the overall score is {rng.randint(1, 5)}"
             for r in rows]
  tok = make_sentencepiece_tokenizer(d, corpus, vocab_size=256)
  assert len(tok) <= 256
  make_tiny_llama_family(d, "mistral", seed=5, vocab_size=256, bos_token_id=1, eos_token_id=2)
  # A louder EOS row, so greedy CoTs of this random model end in EOS at different lengths (the
  # readout's EOS-before-delimiter path) as well as running out of tokens.
  from safetensors.numpy import load_file, save_file
  path = os.path.join(d, "model.safetensors")
  tensors = load_file(path)
  tensors["lm_head.weight"][2] *= 1.6
  save_file(tensors, path, metadata={"format": "pt"})
  return d


def _hf_probs(ckpt, seqs, score_ids):
  """Full-vocabulary softmax at each sequence's last token, by transformers (unpadded rows)."""
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
  out = []
  with torch.no_grad():
    for s in seqs:
      logits = model(input_ids=torch.tensor([s])).logits[0, -1].double()
      out.append(torch.softmax(logits, -1)[list(score_ids)].numpy())
  return np.stack(out)


def test_sentencepiece_score_tokens_and_template(mistral_dir):
  judge = real_jax.Judge.from_hf(mistral_dir)
  tok, st = judge.tokenizer, judge.score_tokens
  assert type(judge).__name__ == "Judge" and judge.params["layers"].get("q_norm") is None
  # The authors' Mistral note: " 4" is "▁" then "4"; the score token is the bare digit and the
  # delimiter, as generated, ends with the lone "▁".
  assert tok.convert_ids_to_tokens(tok.encode(" 4", add_special_tokens=False)) == ["\u2581", "4"]
  assert tok.convert_ids_to_tokens(list(st.token_ids)) == list("12345")
  assert tok.convert_ids_to_tokens(list(st.delimiter_ids))[-2:] == ["\u2581is", "\u2581"]
  assert judge.pad_id == tok.eos_token_id == st.eos_id == 2  # no pad token: pad = eos
  ids = prompts.render_chat(tok, "Grade this.")
  assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]).startswith("[INST]")
  target = prompts.build_target_ids(tok, "Good answer.", 4, score_tokens=st)
  assert tok.convert_ids_to_tokens(target)[-3:] == ["\u2581", "4", "</s>"]


@pytest.mark.parametrize("kind", ["direct", "cot"])
def test_mistral_readout_equals_transformers(mistral_dir, kind):
  """y_hat and pi(k) read by the project's judging step equal transformers' softmax at the
  score position of the same token sequence (prompt, sampled CoT, delimiter)."""
  judge = real_jax.Judge.from_hf(mistral_dir)
  st = judge.score_tokens
  recs = _rows()[:6]
  ids = [prompts.render_chat(judge.tokenizer, judge.prompt_text(r)) for r in recs]
  width = layout.bucket_length(max(map(len, ids)), layout.power_of_two_buckets(2048))
  pt, pm = layout.left_pad(ids, width, judge.pad_id)
  settings = readout.EvalSettings(batch_size=6, greedy=True, max_response_len=12,
                                  readout=kind)
  r = readout.read_batch(judge.graphdef, judge.params, pt, pm, jax.random.PRNGKey(0),
                         settings=settings, score_tokens=st,
                         score_fn=settings.score_fn(judge.graphdef, st, judge.mesh),
                         mesh=judge.mesh, pad_id=judge.pad_id, prompt_buckets=(width,),
                         delim_start=st.delimiter_ids)
  delim = list(st.delimiter_ids)
  seqs = []
  for i, p in enumerate(ids):
    if kind == "direct":
      seqs.append(p + delim)
      continue
    status = readout.STATUS_NAMES[int(r.status[i])]
    cot = r.cot_tokens(i)
    assert len(cot) > 0
    if status == "delimiter":
      seqs.append(p + cot)
    else:  # "force": the delimiter replaces a final EOS
      seqs.append(p + (cot[:-1] if status == "eos_before_delimiter" else cot) + delim)
  if kind == "cot":
    statuses = {readout.STATUS_NAMES[int(x)] for x in r.status}
    assert {"eos_before_delimiter", "truncated"} <= statuses, (statuses, r.cot_length)
  ref = _hf_probs(mistral_dir, seqs, st.token_ids)
  np.testing.assert_allclose(r.score_probs, ref, atol=2e-5)
  assert not judge.renormalize  # y_hat = sum_k v_k pi(k) under the full-vocabulary softmax
  np.testing.assert_allclose(r.y_hat, (ref * np.arange(1, 6)).sum(1), atol=1e-4)
