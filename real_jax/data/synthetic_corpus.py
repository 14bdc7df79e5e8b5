"""The synthetic task's pretraining corpus: what a pretrained LLM knows before it judges.

The paper's judges start from pretrained LLMs that know the arithmetic and the words of every
benchmark; only the judging is learned, in domain. This corpus gives a small Qwen3 the same
start for the synthetic task (`configs/synthetic_base.py` pretrains on it):

  facts     addition facts "3+4=7." over the WHOLE operand range of every split (the train /
            in-domain level and the OOD-hard level), in random order.
  compare   number comparisons in the CoT's notation, "12 vs 12 right. 12 vs 13 close. 12 vs 5
            wrong." (close = off by one), over every sum every split can produce: a pretrained
            LLM knows equality; the judge must still learn when to compare what.
  wordings  sentences of EVERY wording, in-domain and held-out (`IN_DOMAIN_WORDINGS`,
            `OOD_WORDINGS`), shuffled and recombined: the base knows the held-out rubrics' words.
  prompts   free text in the template's style: full Prometheus user prompts (instruction with
            items at any split's level, a response, a reference, a rubric of any wording), up
            to the "###Feedback:" line (not included).
  solutions worked solutions: an instruction of any wording with items at any split's level
            (alone, or inside a full prompt as above), then "Solution: a) 4+8=12 b) 3+2=5 ..."
            (every item found by its label and added, in label order) and, after a full prompt,
            "The response gives a) 13 b) 5 ..." — reading items and answers by their labels,
            over every operand range and wording, the generic skill a pretrained LLM brings to
            any rubric. Not the judge's CoT: no comparison of an answer with a sum, no verdict,
            no score.
Prompts and solutions list the labelled items (and answers) in label order or, half the time,
in a shuffled order, so looking an item up by its label is the skill learned, not a position.

It holds NO judge demonstration: no feedback that compares a response's answers with the sums,
no verdict after a prompt, no "So the overall score is", no score after a prompt. Judging — which answer to compare with which sum, counting,
the score format — is learned only from the in-domain training split (warm-up SFT, RAFT, TRACT,
RL), so the OOD splits test the transfer of known content to a judging skill learned elsewhere.

`probes(config)` check that knowledge (greedy next-word accuracy after "a+b=", after "x vs y"
and of the next operand inside a worked solution; fresh draws from their own RNG stream),
reported by the pretraining stage.
"""
from __future__ import annotations

import numpy as np

from real_jax.data import synthetic as syn
from real_jax.judge import prompts as prompts_lib

__all__ = ["KINDS", "KIND_WEIGHTS", "SOLUTION_WORDS", "VERDICTS", "PROBES_FILE", "corpus_levels",
    "max_sum", "document", "packed_rows", "probes"]

KINDS = ("facts", "compare", "wordings", "prompts", "solutions")
# prompts and solutions are ~3x longer than the other documents
KIND_WEIGHTS = (0.3, 0.25, 0.15, 0.1, 0.2)
SOLUTION_WORDS = ("Solution", "gives")  # the words of the worked solutions (in the vocabulary)
VERDICTS = ("right", "close", "wrong")
PROBES_FILE = "pretrain_probes.json"  # the pretraining run's probe accuracies (workdir, export)


def corpus_levels(config: syn.SyntheticConfig) -> tuple[int, ...]:
  """The difficulty levels of every split (train / test and test_ood_hard)."""
  return tuple(sorted({syn._split_params(config, s)[0] for s in syn.SPLITS}))


def max_sum(config: syn.SyntheticConfig) -> int:
  return max(n * m for n, m in (syn.LEVELS[lv] for lv in corpus_levels(config)))


def _operands(rng: np.random.Generator, level: int) -> list[int]:
  n_ops, max_op = syn.LEVELS[level]
  return rng.integers(0, max_op + 1, size=n_ops).tolist()


def _fact(rng, config) -> str:
  levels = corpus_levels(config)
  ops = _operands(rng, levels[int(rng.integers(len(levels)))])
  return f"{syn._expr(ops)}={sum(ops)}."


def _comparison(rng, config) -> str:
  top = max_sum(config)
  a = int(rng.integers(0, top + 1))
  verdict = VERDICTS[int(rng.integers(3))]
  if verdict == "right":
    b = a
  elif verdict == "close":
    b = a + 1 if (a == 0 or rng.random() < 0.5) else a - 1
  else:
    b = int(rng.integers(0, top + 1))
    while abs(b - a) <= 1:
      b = int(rng.integers(0, top + 1))
  return f"{a} vs {b} {verdict}."


def _sentences() -> list[str]:
  out = []
  for w in syn.IN_DOMAIN_WORDINGS + syn.OOD_WORDINGS:
    out += [w.instruction, w.reference, w.criteria, *w.descriptions]
  return out


_SENTENCES = _sentences()


def _items_and_answers(rng, config) -> tuple[syn.Wording, list[list[int]], list[int]]:
  """A wording of any split, 4 items at any split's level and a response's answers (each the
  sum, or off by one, with probability 1/2 each)."""
  levels = corpus_levels(config)
  level = levels[int(rng.integers(len(levels)))]
  wordings = syn.IN_DOMAIN_WORDINGS + syn.OOD_WORDINGS
  w = wordings[int(rng.integers(len(wordings)))]
  items = [_operands(rng, level) for _ in range(syn.N_ITEMS)]
  answers = [sum(ops) + int(rng.integers(-1, 2)) * int(rng.random() < 0.5) for ops in items]
  return w, items, [max(a, 0) for a in answers]


def _order(rng) -> list[int]:
  """The order in which a text lists labelled items: a-d, or (half the time) shuffled."""
  return rng.permutation(syn.N_ITEMS).tolist() if rng.random() < 0.5 else list(range(syn.N_ITEMS))


def _prompt_text(w: syn.Wording, items, answers, rng) -> str:
  fields = prompts_lib.JudgeFields(
      instruction=f"{w.instruction} " + syn.labelled([syn._expr(o) for o in items], _order(rng)),
      response=syn.labelled(answers, _order(rng)), reference_answer=w.reference,
      rubric=prompts_lib.format_rubric(w.criteria, w.descriptions))
  # Without the closing "###Feedback:" line: the corpus never shows what follows it.
  return prompts_lib.render_prompt(fields).rsplit("###Feedback:", 1)[0].rstrip()


def _prompt(rng, config) -> str:
  return _prompt_text(*_items_and_answers(rng, config), rng)


def _solution(rng, config) -> str:
  """A worked solution of an instruction's items, alone or after a full prompt (then the
  response's answers are read back too)."""
  w, items, answers = _items_and_answers(rng, config)
  solved = syn.labelled([f"{syn._expr(o)}={sum(o)}" for o in items])  # a, b, c, d
  if rng.random() < 0.5:
    listed = syn.labelled([syn._expr(o) for o in items], _order(rng))
    return f"{w.instruction} {listed} Solution: {solved}."
  return (f"{_prompt_text(w, items, answers, rng)} Solution: {solved}. The response gives "
          f"{syn.labelled(answers)}.")


def document(rng: np.random.Generator, config: syn.SyntheticConfig) -> str:
  """One corpus document (a few sentences of one kind)."""
  kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
  if kind == "facts":
    return " ".join(_fact(rng, config) for _ in range(int(rng.integers(4, 12))))
  if kind == "compare":
    return " ".join(_comparison(rng, config) for _ in range(int(rng.integers(4, 12))))
  if kind == "wordings":
    idx = rng.choice(len(_SENTENCES), size=int(rng.integers(2, 6)), replace=False)
    return " ".join(_SENTENCES[i] for i in idx)
  if kind == "solutions":
    return _solution(rng, config)
  return _prompt(rng, config)


# Stream ids of the two RNG streams (numpy SeedSequence entropy [seed, ..., stream]): the corpus
# documents and the held-out probes never share draws.
CORPUS_STREAM = 7
PROBE_STREAM = 99


def packed_rows(tokenizer, config: syn.SyntheticConfig, *, seed: int, step: int, rows: int,
                length: int, eos_id: int) -> np.ndarray:
  """[rows, length] int32 token ids: documents (each followed by EOS) packed end to end,
  deterministic in (seed, step) — a resumable stream with no state but the step."""
  rng = np.random.default_rng([seed, step, CORPUS_STREAM])
  need = rows * length
  ids: list[int] = []
  while len(ids) < need:
    docs = [document(rng, config) for _ in range(32)]
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
      ids += enc + [eos_id]
  return np.asarray(ids[:need], np.int32).reshape(rows, length)


def probes(config: syn.SyntheticConfig, n: int = 256, seed: int = 12345
           ) -> dict[str, list[tuple[str, str]]]:
  """Held-out knowledge checks: kind -> [(prefix text, expected next word)].

  facts_L<level>: "x+y=" after one other fact, the sum expected; compare: "a vs b" after one
  other comparison, the verdict expected; solve_L<level>: an instruction of any wording with
  items at that level, "Solution:" and the items before item k (k = 2..4) solved, then item k's
  label: its first operand expected (found by the label, not by position). Drawn from their own
  RNG stream (not the corpus's); `seed` 12345 is the probe set the committed base reports.
  """
  rng = np.random.default_rng([seed, PROBE_STREAM])
  out: dict[str, list[tuple[str, str]]] = {}
  for level in corpus_levels(config):
    rows = []
    for _ in range(n):
      ops = _operands(rng, level)
      rows.append((f"{_fact(rng, config)} {syn._expr(ops)}=", str(sum(ops))))
    out[f"facts_L{level}"] = rows
  rows = []
  for _ in range(n):
    text = _comparison(rng, config)
    head, verdict = text[:-1].rsplit(" ", 1)
    rows.append((f"{_comparison(rng, config)} {head}", verdict))
  out["compare"] = rows
  wordings = syn.IN_DOMAIN_WORDINGS + syn.OOD_WORDINGS
  for level in corpus_levels(config):
    rows = []
    for _ in range(n):
      w = wordings[int(rng.integers(len(wordings)))]
      items = [_operands(rng, level) for _ in range(syn.N_ITEMS)]
      k = int(rng.integers(1, syn.N_ITEMS))
      done = syn.labelled([f"{syn._expr(o)}={sum(o)}" for o in items[:k]])
      listed = syn.labelled([syn._expr(o) for o in items], _order(rng))
      rows.append((f"{w.instruction} {listed} Solution: {done} {syn.ITEM_LABELS[k]})",
                   str(items[k][0])))
    out[f"solve_L{level}"] = rows
  return out
