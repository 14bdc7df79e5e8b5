"""The synthetic judge task: the embedded default for the CPU demo and the tests.

Task. The instruction asks for the sums of 4 small additions; the response to grade gives 4
answers, some wrong; the rubric scores how many are right: score = 1 + number correct (1..5).
`generate_all` makes rows in the Prometheus fields (orig_instruction, orig_response,
orig_reference_answer, orig_criteria, orig_score1..5_description, orig_score, orig_feedback;
test splits also gpt4_score, the grader list), and the `SyntheticJudge` builder turns them into
the common records through the same `records.make_record` as Feedback Collection, so the same
prompt, tokenisation, parsing and score code runs. Extra columns: true_score (clean score),
demo_score, demo_has_error, level. Example (difficulty 1)::

  orig_instruction: Add the numbers in each item. a) 3+4 b) 2+5 c) 6+1 d) 7+2
  orig_response:    a) 7 b) 8 c) 7 d) 9
  orig_feedback:    a) 3+4=7 vs 7 right. b) 2+5=7 vs 8 wrong. c) 6+1=7 vs 7 right.
                    d) 7+2=9 vs 9 right. So the overall score is 4

Why it needs a CoT: a step-by-step feedback reaches the score by local steps (find one item by
its label, add it, compare with that item's answer, then count the "right"s); a single guess must do 4 additions, 4
comparisons and a count in one forward pass, which a ~1M-parameter model cannot.

Knobs (`SyntheticConfig`):
  difficulty       item shape: 0: 2 operands in 0..4; 1 (default): 2 in 0..9; 2: 3 in 0..6;
                   3: 3 in 0..9; 4: 4 in 0..9. The `test_ood_hard` split uses difficulty + 1.
  label_noise      p: each grader label is moved by ±1 (random sign; at 1 or 5 it moves inward,
                   so the label changes with probability exactly p) — disagreeing graders, so the
                   expected score, not the mode, is the best prediction.
  n_eval_graders   test splits average this many noisy labels (float targets, like the
                   mean-of-GPT-4 targets of FLASK/MT/Vicuna); train has one label (like
                   Feedback Collection's orig_score).
  cot_error_rate   probability that a demonstration (orig_feedback) contains one wrong sum
                   (off by one); its verdict and final score follow the wrong step (the analogue
                   of imperfect GPT-4 feedback for warm-up SFT).
  near_miss_rate   fraction of wrong answers that are off by one (vs uniform over 0..max sum).
  ood_hard         "level" (default): OOD hard is the next difficulty level; "carry": the same
                   level, split by the sum: every other split's items have one-digit sums, OOD
                   hard's two-digit sums (at difficulty 1: 5+7, 9+9 against 2+7, 4+4), so the
                   judge has copied every operand and (with answer_max 18) every answer token in
                   domain and meets new sums only.
  answer_max       the other wrong answers are uniform over 0..answer_max without the sum
                   (0, the default: the level's max sum). Above the max sum (e.g. 18 at
                   difficulty 0), a judge copies answers it could never compute in domain, as
                   every answer of the larger OOD-hard items is.
  near_miss_credit q > 0 makes near misses AMBIGUOUS (graded ambiguity): each grader counts an
                   off-by-one answer as right with probability q, independently, so graders
                   genuinely disagree and E[y*|x] is fractional and differs from the mode. The
                   demonstrations then call such a step "close" ("a) 2+2=4 vs 5 close.") and end
                   with the score of one such grader. Each row keeps `expected_score`, the exact
                   E[label | item] (`expected_score()`: Binomial credit, then the label noise's
                   mean shift), so the Bayes-optimal predictor's correlation is computable.
                   0 (the default): off by one is plainly wrong, as before.
  scores           the score scale: "1-5" (default: score = 1 + number correct) or "0-4"
                   (score = number correct; the HelpSteer-style variant). Labels, graders,
                   demonstrations and the rubric's keys (orig_score0..4_description) follow it.
  reference_has_answers  if True the reference answer lists the correct sums (easier: compare
                   instead of add); default False: a generic reference sentence.
  shuffle_items    if True the instruction lists the 4 labelled items in a random order of
                   labels ("c) 2+3 a) 4+1 d) ..."; the response keeps a, b, c, d); the
                   demonstration still walks a, b, c, d, so a judge must find each item by its
                   label, not by its position (which a held-out wording shifts).
  ood_rubric_shuffle_response  if True the OOD-rubric split's responses also list their answers
                   in a random order of labels ("c) 7 a) 12 d) 9 b) 5"), a format the judge never
                   saw (its training responses keep a, b, c, d) and the base reads (its corpus
                   lists answers in either order): the judge must find each answer by its label.
                   The split's items, answers and labels are those of the default; only the
                   order of its responses changes, and no other split changes.

Splits, and what each holds out from judge training (the pretrained base of
`configs/synthetic_base.py` knows all of it; `real_jax.data.synthetic_corpus`):
  train            the judge's training data: items at `difficulty`, the in-domain wordings.
  test             in domain: same item distribution and wordings as train (disjoint items).
  test_ood_hard    larger content: items at difficulty + 1 (at the default difficulty 0 → 1:
                   operands 0..9 instead of 0..4, sums up to 18), whose additions, sums and
                   comparisons the judge never saw in training (the base knows them).
  test_ood_rubric  held-out rubric wordings (`OOD_WORDINGS`: instruction, reference, criteria,
                   score descriptions) made of words the base knows, never seen by the judge.
All splits are disjoint in (items, answers); the same seed gives the same data.

Tokenizer (`build_synthetic_tokenizer`): word-level, 237 tokens: the numbers 0..99, the words
of all wordings and of the base's worked solutions, punctuation, `<|pad|>`, `<unk>`, `<|im_start|>`, `<|im_end|>` (EOS), and the
fixed lines of the Prometheus template (headers and rules) as single added tokens, so the *full*
Prometheus prompt (the same template as the real data, no compact variant) renders, chat
template included, to at most 110 tokens at difficulty 0-1 (118 at 2-3, 126 at 4; +4 with
reference_has_answers). A demonstration (CoT + delimiter + score + EOS) is 51 tokens at
difficulty 0-1 (59 at 2-3, 67 at 4).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from math import comb
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from real_jax.data.tfds_base import JudgeBuilderBase, JudgeBuilderConfig
from real_jax.judge import prompts as prompts_lib

__all__ = ["N_ITEMS", "ITEM_LABELS", "LEVELS", "MAX_LEVEL", "SPLITS", "Wording",
    "IN_DOMAIN_WORDINGS", "OOD_WORDINGS", "COT_WORDS", "SyntheticConfig", "noisy_label",
    "grader_score", "expected_score", "labelled", "generate_all", "generate_split",
    "SPECIAL_TOKENS", "CHAT_TEMPLATE", "synthetic_vocab", "build_synthetic_tokenizer",
    "SyntheticBuilderConfig", "SyntheticJudge"]

N_ITEMS = 4
ITEM_LABELS = ("a", "b", "c", "d")
LEVELS = {0: (2, 4), 1: (2, 9), 2: (3, 6), 3: (3, 9), 4: (4, 9)}  # (n operands, max operand)
MAX_LEVEL = max(LEVELS)
SPLITS = ("train", "test", "test_ood_hard", "test_ood_rubric")


@dataclasses.dataclass(frozen=True)
class Wording:
  instruction: str
  reference: str
  criteria: str
  descriptions: tuple[str, str, str, str, str]


IN_DOMAIN_WORDINGS = (
    Wording("Add the numbers in each item.", "Every sum in the response is correct.",
            "Are the sums in the response correct?",
            ("None of the four sums is correct.", "Exactly one sum is correct.",
             "Exactly two sums are correct.", "Exactly three sums are correct.",
             "All four sums are correct.")),
    Wording("Compute each sum.", "All answers are right.", "How many answers are right?",
            ("No answer is right.", "One answer is right.", "Two answers are right.",
             "Three answers are right.", "All four answers are right.")),
    Wording("Find the total of each item.", "Each total is correct.",
            "Does the response add correctly?",
            ("It gets every item wrong.", "It gets one item right.", "It gets two items right.",
             "It gets three items right.", "It gets every item right.")),
)

OOD_WORDINGS = (
    Wording("Work out these additions.", "The arithmetic is flawless.",
            "Judge the accuracy of the arithmetic.",
            ("The arithmetic fails on all four items.", "Only a single item is accurate.",
             "Half of the items are accurate.", "Only a single item is inaccurate.",
             "The arithmetic is flawless.")),
    Wording("Give the result of every addition.", "Four correct totals.",
            "Count the correct totals.",
            ("Zero correct totals.", "A single correct total.", "A pair of correct totals.",
             "Three correct totals out of four.", "Four correct totals.")),
)

COT_WORDS = ("vs", "right", "wrong", "close")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of the synthetic judge task (see the module docstring)."""

  seed: int = 0
  difficulty: int = 1
  label_noise: float = 0.2
  n_eval_graders: int = 3
  cot_error_rate: float = 0.1
  near_miss_rate: float = 0.5
  near_miss_credit: float = 0.0
  ood_hard: str = "level"
  answer_max: int = 0
  scores: str = "1-5"
  reference_has_answers: bool = False
  shuffle_items: bool = False
  ood_rubric_shuffle_response: bool = False
  train_size: int = 8192
  test_size: int = 512
  ood_size: int = 512

  def __post_init__(self):
    if self.difficulty not in LEVELS:
      raise ValueError(f"difficulty must be in {sorted(LEVELS)}, got {self.difficulty}")
    for name in ("label_noise", "cot_error_rate", "near_miss_rate", "near_miss_credit"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    if self.n_eval_graders < 1:
      raise ValueError("n_eval_graders must be >= 1")
    if self.ood_hard not in ("level", "carry"):
      raise ValueError(f"ood_hard must be 'level' or 'carry', got {self.ood_hard!r}")
    n_ops, max_op = LEVELS[self.difficulty]
    if self.ood_hard == "carry" and (n_ops != 2 or n_ops * max_op < 10):
      raise ValueError("ood_hard='carry' needs two operands per item whose sums reach two "
                       "digits: difficulty 1 (operands 0..9)")
    if self.scores not in ("1-5", "0-4"):
      raise ValueError(f"scores must be '1-5' or '0-4' (five scores for 0..4 right answers), "
                       f"got {self.scores!r}")
    if not 0 <= self.answer_max <= 99:
      raise ValueError(f"answer_max must be in 0..99 (the tokenizer's numbers), got "
                       f"{self.answer_max}")

  @property
  def score_lo(self) -> int:
    """The lowest score: 1 on 1-5, 0 on 0-4 (the score of no right answer)."""
    return int(self.scores.split("-")[0])

  def split_size(self, split: str) -> int:
    return {"train": self.train_size, "test": self.test_size}.get(split, self.ood_size)

  def fingerprint(self) -> str:
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


class _Uniforms:
  """Uniform draws from a numpy Generator, fetched in blocks (numpy calls cost microseconds)."""

  def __init__(self, rng: np.random.Generator, block: int = 64):
    self._rng = rng
    self._block = block
    self._buf: list[float] = []
    self._pos = 0

  def random(self) -> float:
    if self._pos == len(self._buf):
      self._buf = self._rng.random(self._block).tolist()
      self._pos = 0
    self._pos += 1
    return self._buf[self._pos - 1]

  def integers(self, n: int) -> int:
    """Uniform integer in [0, n)."""
    return min(int(self.random() * n), n - 1)

  def permutation(self, n: int) -> list[int]:
    keys = [self.random() for _ in range(n)]
    return sorted(range(n), key=keys.__getitem__)


def noisy_label(true_score: int, p: float, rng, lo: int = 1) -> int:
  """true_score moved by ±1 with probability p (inward at the ends lo and lo + 4, so it changes
  w.p. exactly p)."""
  if rng.random() >= p:
    return true_score
  step = 1 if rng.random() < 0.5 else -1
  if not lo <= true_score + step <= lo + N_ITEMS:
    step = -step
  return true_score + step


def grader_score(n_right: int, n_close: int, config: SyntheticConfig, rng) -> int:
  """One grader's label: the lowest score (1, or 0 on 0-4) + the exact answers + the near misses
  this grader credits (each with probability near_miss_credit), then moved by ±1 with
  probability label_noise."""
  lo = config.score_lo
  credited = sum(rng.random() < config.near_miss_credit for _ in range(n_close))
  return noisy_label(lo + n_right + credited, config.label_noise, rng, lo)


def expected_score(n_right: int, n_close: int, config: SyntheticConfig) -> float:
  """E[one grader's label | item], exactly: the Bayes-optimal prediction of a test target (the
  mean of graders drawn independently given the item). Binomial(n_close, credit) over the
  credited near misses, then the label noise's mean shift (+p at the lowest score, −p at the
  highest, 0 inside)."""
  q, p = config.near_miss_credit, config.label_noise
  lo = config.score_lo
  total = 0.0
  for k in range(n_close + 1):
    s = lo + n_right + k
    shift = p if s == lo else (-p if s == lo + N_ITEMS else 0.0)
    total += comb(n_close, k) * q ** k * (1 - q) ** (n_close - k) * (s + shift)
  return total


def _split_params(config: SyntheticConfig, split: str) -> tuple[int, tuple[Wording, ...]]:
  if split not in SPLITS:
    raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
  level = (min(config.difficulty + 1, MAX_LEVEL) if split == "test_ood_hard"
           and config.ood_hard == "level" else config.difficulty)
  wordings = OOD_WORDINGS if split == "test_ood_rubric" else IN_DOMAIN_WORDINGS
  return level, wordings


def _draw_item(rng, n_ops: int, max_op: int, config: SyntheticConfig, split: str) -> list[int]:
  """One item's operands; with ood_hard="carry", redrawn until its sum is one digit (every split
  but OOD hard) or two digits (OOD hard)."""
  while True:
    item = [rng.integers(max_op + 1) for _ in range(n_ops)]
    if config.ood_hard != "carry" or (sum(item) >= 10) == (split == "test_ood_hard"):
      return item


def _expr(ops) -> str:
  return "+".join(map(str, ops))


def labelled(values, order=None) -> str:
  """ "a) v0 b) v1 ..." with the labelled values listed in `order` (default a, b, c, d)."""
  order = range(len(values)) if order is None else order
  return " ".join(f"{ITEM_LABELS[i]}) {values[i]}" for i in order)


def _make_example(rng: _Uniforms, config: SyntheticConfig, split: str):
  """One Prometheus-field row and its identity key (the items and the answers, not the wording)."""
  level, wordings = _split_params(config, split)
  n_ops, max_op = LEVELS[level]
  max_sum = n_ops * max_op
  wording = wordings[rng.integers(len(wordings))]
  ops = [_draw_item(rng, n_ops, max_op, config, split) for _ in range(N_ITEMS)]
  sums = [sum(item) for item in ops]
  k_correct = rng.integers(N_ITEMS + 1)
  correct = [False] * N_ITEMS
  for i in rng.permutation(N_ITEMS)[:k_correct]:
    correct[i] = True
  answers = []
  for i in range(N_ITEMS):
    s = sums[i]
    if correct[i]:
      answers.append(s)
    elif rng.random() < config.near_miss_rate:
      step = 1 if (s == 0 or rng.random() < 0.5) else -1
      answers.append(s + step)
    else:  # uniform over 0..answer_max (default: max_sum) without s
      v = rng.integers(max(config.answer_max, max_sum))
      answers.append(v + 1 if v >= s else v)
  true_score = config.score_lo + k_correct
  graded = config.near_miss_credit > 0  # near misses are ambiguous: graders may credit them
  n_close = sum(abs(a - s) == 1 for a, s in zip(answers, sums)) if graded else 0

  # Demonstration CoT, possibly with one wrong sum whose consequences it follows.
  shown = list(sums)
  demo_has_error = bool(rng.random() < config.cot_error_rate)
  if demo_has_error:
    j = rng.integers(N_ITEMS)
    shown[j] = shown[j] + (1 if (shown[j] == 0 or rng.random() < 0.5) else -1)
  words = [("right" if a == s else "close" if graded and abs(a - s) == 1 else "wrong")
           for a, s in zip(answers, shown)]
  # The teacher credits each near miss it sees as a grader would (with near_miss_credit).
  demo_score = config.score_lo + words.count("right") + sum(
      rng.random() < config.near_miss_credit for _ in range(words.count("close")))
  steps = [f"{ITEM_LABELS[i]}) {_expr(ops[i])}={shown[i]} vs {answers[i]} {words[i]}."
           for i in range(N_ITEMS)]
  feedback = " ".join(steps) + f" So the overall score is {demo_score}"

  item_order = rng.permutation(N_ITEMS) if config.shuffle_items else range(N_ITEMS)
  items = labelled([_expr(o) for o in ops], item_order)
  response = labelled(answers)
  reference = (" ".join(f"{ITEM_LABELS[i]}) {sums[i]}" for i in range(N_ITEMS))
               if config.reference_has_answers else wording.reference)
  key = (tuple(map(tuple, ops)), tuple(answers))
  row = {
      "orig_instruction": f"{wording.instruction} {items}",
      "orig_response": response,
      "orig_reference_answer": reference,
      "orig_criteria": wording.criteria,
      **{f"orig_score{config.score_lo + k}_description": d
         for k, d in enumerate(wording.descriptions)},
      "orig_feedback": feedback,
      "true_score": true_score,
      "expected_score": expected_score(k_correct, n_close, config),
      "n_close": n_close,
      "demo_score": demo_score,
      "demo_has_error": demo_has_error,
      "level": level,
  }
  if split == "train":
    row["orig_score"] = str(grader_score(k_correct, n_close, config, rng))
  else:
    graders = [grader_score(k_correct, n_close, config, rng) for _ in range(config.n_eval_graders)]
    row["orig_score"] = str(graders[0])
    row["gpt4_score"] = graders
  return row, key


def generate_all(config: SyntheticConfig = SyntheticConfig()) -> dict[str, list[dict[str, Any]]]:
  """All splits as lists of Prometheus-field rows; deterministic in `config` (incl. the seed).

  Splits are generated in the order test, test_ood_hard, test_ood_rubric, train, each from its
  own RNG stream, and an example whose (items, answers) was already used anywhere is redrawn.
  """
  seen: set = set()
  out = {}
  for split in ("test", "test_ood_hard", "test_ood_rubric", "train"):
    rng = _Uniforms(np.random.default_rng([config.seed, SPLITS.index(split), 20260101]))
    rows, responses = [], []  # responses: each row's answers in label order (key[1])
    n = config.split_size(split)
    misses = 0  # consecutive draws that were already used
    while len(rows) < n:
      row, key = _make_example(rng, config, split)
      if key in seen:
        misses += 1
        if misses > 2000:
          raise ValueError(f"cannot draw {n} distinct examples for split {split!r} at "
                           f"difficulty {config.difficulty}; lower the split sizes")
        continue
      misses = 0
      seen.add(key)
      row["id"] = f"synthetic-{split}-{len(rows):06d}"
      rows.append(row)
      responses.append(key[1])
    out[split] = rows
    if config.ood_rubric_shuffle_response and split == "test_ood_rubric":
      # Its own stream: the split's items, answers and labels stay those of the default.
      order = np.random.default_rng([config.seed, SPLITS.index(split), 20261208])
      for row, answers in zip(rows, responses):
        row["orig_response"] = labelled(answers, order.permutation(N_ITEMS))
  return {s: out[s] for s in SPLITS}


def generate_split(config: SyntheticConfig, split: str) -> list[dict[str, Any]]:
  return generate_all(config)[split]


# --- tokenizer ---------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<|pad|>", "<unk>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_EXTRA_WORDS = ("user", "assistant", "system", "The", "response", "is", "correct", "Good", "ok",
                "So", "the", "overall", "score", "Feedback", "RESULT", "Score", *ITEM_LABELS,
                *COT_WORDS, "Solution", "gives")
_PUNCT = tuple(".,:;?!()[]{}+-=*/\"'#%<>_|&")


def _pre_tokenizer():
  return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                  pre_tokenizers.Punctuation("isolated")])


def _added_lines(template: prompts_lib.PromptTemplate) -> list[str]:
  """The template's fixed lines as single tokens: those of the 1-5 scale, then (appended, so the
  1-5 ids never move) the lines that differ on the 0-4 variant's scale."""
  lines = template.boilerplate() + [f"Score {k}:" for k in range(1, 6)]
  return lines + [l for l in template.scaled("0-4").boilerplate() if l not in lines] + ["Score 0:"]


def synthetic_vocab(template: prompts_lib.PromptTemplate = prompts_lib.PROMETHEUS_ABSOLUTE) -> list[str]:
  """The word-level vocabulary (without the added template lines), deterministic."""
  pre = _pre_tokenizer()
  texts = list(_EXTRA_WORDS)
  for w in IN_DOMAIN_WORDINGS + OOD_WORDINGS:
    texts += [w.instruction, w.reference, w.criteria, *w.descriptions]
  words = set()
  for t in texts:
    words.update(piece for piece, _ in pre.pre_tokenize_str(t))
  numbers = [str(i) for i in range(100)]
  rest = sorted(words - set(numbers) - set(_PUNCT))
  return list(SPECIAL_TOKENS) + numbers + list(_PUNCT) + rest


def build_synthetic_tokenizer(out_dir: str | os.PathLike,
                              template: prompts_lib.PromptTemplate = prompts_lib.PROMETHEUS_ABSOLUTE) -> str:
  """Writes the synthetic task's Hugging Face tokenizer (tokenizer.json, tokenizer_config.json,
  chat_template.jinja) to `out_dir` and returns the path; load it with
  `real_jax.judge.prompts.load_tokenizer` (or AutoTokenizer)."""
  vocab_list = synthetic_vocab(template)
  vocab = {w: i for i, w in enumerate(vocab_list)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = _pre_tokenizer()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  tok.add_tokens([AddedToken(line, special=False, normalized=False) for line in _added_lines(template)])
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                               unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
  hf.chat_template = CHAT_TEMPLATE
  hf.model_max_length = 512
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  hf.save_pretrained(out_dir)
  return out_dir


# --- TFDS builder ------------------------------------------------------------------------------

@dataclasses.dataclass
class SyntheticBuilderConfig(JudgeBuilderConfig):
  """Builder config: the common judge options plus the task parameters (`SyntheticConfig`)."""

  seed: int = 0
  difficulty: int = 1
  label_noise: float = 0.2
  n_eval_graders: int = 3
  cot_error_rate: float = 0.1
  near_miss_rate: float = 0.5
  near_miss_credit: float = 0.0
  ood_hard: str = "level"
  answer_max: int = 0
  reference_has_answers: bool = False
  shuffle_items: bool = False
  ood_rubric_shuffle_response: bool = False
  train_size: int = 8192
  test_size: int = 512
  ood_size: int = 512

  def task_config(self) -> SyntheticConfig:
    return SyntheticConfig(**{f.name: getattr(self, f.name)
                              for f in dataclasses.fields(SyntheticConfig)})


class SyntheticJudge(JudgeBuilderBase):
  """The synthetic judge task (4 small additions graded 1..5 by how many are right).

  Splits: train (one noisy label), test (in-domain), test_ood_hard (more operands),
  test_ood_rubric (held-out wordings); test targets are the mean of n_eval_graders noisy labels.
  """

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {"1.0.0": "Initial synthetic judge task.",
                   "1.1.0": "Graded near misses (near_miss_credit), expected_score, n_close.",
                   "1.2.0": "Labelled CoT steps; shuffle_items.",
                   "1.3.0": "ood_rubric_shuffle_response."}
  BUILDER_CONFIGS = [SyntheticBuilderConfig(name="score_phrase", output_format="score_phrase"),
                     SyntheticBuilderConfig(name="result", output_format="result")]
  SOURCE = "synthetic"
  SPLITS = SPLITS
  CONFIG_CLASS = SyntheticBuilderConfig

  # Stored: the common record (whose instruction/response/reference_answer/rubric/feedback are
  # the Prometheus fields, already assembled) plus the task's own ground-truth columns. The raw
  # Prometheus-field rows are `generate_all(config)`.
  def _extra_features(self):
    return {"true_score": np.int32, "expected_score": np.float32, "n_close": np.int32,
            "demo_score": np.int32, "demo_has_error": np.bool_, "level": np.int32}

  def _split_generators(self, dl_manager):
    del dl_manager
    rows = generate_all(self.builder_config.task_config())
    # train: the single label (like Feedback Collection's orig_score); tests: mean of graders.
    return {split: self._generate_from_rows(
        split, rows[split], path=f"<synthetic:{split}>",
        ground_truth="orig_score" if split == "train" else "gpt4") for split in SPLITS}

  def _row_id(self, index, row):
    return row["id"]

  def _extra_values(self, row):
    return {"true_score": int(row["true_score"]),
            "expected_score": float(row["expected_score"]), "n_close": int(row["n_close"]),
            "demo_score": int(row["demo_score"]),
            "demo_has_error": bool(row["demo_has_error"]), "level": int(row["level"])}
