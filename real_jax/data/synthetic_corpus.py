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

It holds NO judge demonstration: no feedback that walks through a response, no "So the overall
score is", no score after a prompt. Judging — which answer to compare with which sum, counting,
the score format — is learned only from the in-domain training split (warm-up SFT, RAFT, TRACT,
RL), so the OOD splits test the transfer of known content to a judging skill learned elsewhere.

`probes(config)` check that knowledge (greedy next-word accuracy after "a+b=" and after "x vs
y", fresh draws from their own RNG stream), reported by the pretraining stage.
"""
from __future__ import annotations

import numpy as np

from real_jax.data import synthetic as syn
from real_jax.judge import prompts as prompts_lib

KINDS = ("facts", "compare", "wordings", "prompts")
KIND_WEIGHTS = (0.4, 0.3, 0.2, 0.1)  # prompts are ~3x longer than the other documents
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


def _prompt(rng, config) -> str:
  levels = corpus_levels(config)
  level = levels[int(rng.integers(len(levels)))]
  wordings = syn.IN_DOMAIN_WORDINGS + syn.OOD_WORDINGS
  w = wordings[int(rng.integers(len(wordings)))]
  items = [_operands(rng, level) for _ in range(syn.N_ITEMS)]
  answers = [sum(ops) + int(rng.integers(-1, 2)) * int(rng.random() < 0.5) for ops in items]
  answers = [max(a, 0) for a in answers]
  fields = prompts_lib.JudgeFields(
      instruction=f"{w.instruction} " + " ".join(
          f"{syn.ITEM_LABELS[i]}) {syn._expr(ops)}" for i, ops in enumerate(items)),
      response=" ".join(f"{syn.ITEM_LABELS[i]}) {a}" for i, a in enumerate(answers)),
      reference_answer=w.reference,
      rubric=prompts_lib.format_rubric(w.criteria, w.descriptions))
  # Without the closing "###Feedback:" line: the corpus never shows what follows it.
  return prompts_lib.render_prompt(fields).rsplit("###Feedback:", 1)[0].rstrip()


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
  return _prompt(rng, config)


def packed_rows(tokenizer, config: syn.SyntheticConfig, *, seed: int, step: int, rows: int,
                length: int, eos_id: int) -> np.ndarray:
  """[rows, length] int32 token ids: documents (each followed by EOS) packed end to end,
  deterministic in (seed, step) — a resumable stream with no state but the step."""
  rng = np.random.default_rng([seed, step, 7])
  need = rows * length
  ids: list[int] = []
  while len(ids) < need:
    docs = [document(rng, config) for _ in range(32)]
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
      ids += enc + [eos_id]
  return np.asarray(ids[:need], np.int32).reshape(rows, length)


def probes(config: syn.SyntheticConfig, n: int = 256, seed: int = 12345) -> dict[str, list[tuple[str, str]]]:
  """Held-out knowledge checks: kind -> [(prefix text, expected next word)].

  facts_L<level>: "x+y=" after one other fact, the sum expected; compare: "a vs b" after one
  other comparison, the verdict expected. Drawn from their own RNG stream (not the corpus's).
  """
  rng = np.random.default_rng([seed, 99])
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
  return out
