"""A trained judge as one object: load it, grade records, read every output of the judgement.

  import real_jax
  judge = real_jax.Judge.from_workdir("workdirs/synthetic")        # a run's last checkpoint
  judge = real_jax.Judge.from_workdir("workdirs/synthetic", best=True)   # ... its best by validation
  judge = real_jax.Judge.from_hf("exported/judge")                 # a Hugging Face directory
  grades = judge.grade([{"instruction": ..., "response": ..., "rubric": ...,
                         "reference_answer": ...}])
  g = grades[0]
  g.cot, g.score_probs, g.y_hat, g.sampled_score, g.status

A record is a dict with a ready judge prompt under "prompt" (as the datasets' records have), or
the fields of one: `instruction`, `response`, `rubric` (and optionally `reference_answer`), or
Feedback Collection's `orig_*` fields, or a prebuilt Prometheus prompt under `instruction`; the
prompt is then built with the same template as training (`judge.prompts.build_judge_prompt`).

Grading samples one CoT per record and reads the score exactly as evaluation does (the shared
`readout.read_batch`: RAIL y_hat = sum_k v_k pi(k | x, c) at the score position, and the score
token sampled there); the score tokens come from the tokenizer (`judge.scores.ScoreTokens`), so
nobody builds them by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from real_jax import layout, models, readout
from real_jax import sharding as shd
from real_jax.judge import prompts as prompts_lib
from real_jax.judge import scores as scores_lib
from real_jax.models import attention as attention_lib
from real_jax.models import hf as hf_io
from real_jax.train import checkpoint as ckpt_lib

__all__ = ["Grade", "Judge"]


@dataclasses.dataclass(frozen=True)
class Grade:
  """One judgement.

  cot: the sampled feedback (chain of thought), up to and including the delimiter if reached.
  score_probs: {score value: pi(score token | prompt, cot)} at the score position (full-vocabulary
    softmax, or renormalised over the score tokens when the judge was built so).
  score_mass: total probability on the score tokens (< 1 under the full-vocabulary softmax).
  y_hat: the RAIL expected score sum_k v_k pi(k).
  sampled_score: the score token sampled at that position (None if it was not a score token).
  status: "delimiter" (the CoT reached it), "eos_before_delimiter" or "truncated" (the delimiter
    was appended to read a score anyway).
  With `grade(..., num_cots=k)`: score_probs, score_mass and y_hat are means over the k CoTs,
  sampled_score their vote (`readout.vote`), cot and status the first CoT's; `cots`,
  `cot_y_hats` (each CoT's RAIL prediction after the `invalid` rule) and `cot_sampled_scores`
  keep each CoT's.
  """
  cot: str
  score_probs: dict[float, float]
  score_mass: float
  y_hat: float
  sampled_score: float | None
  status: str
  cots: tuple[str, ...] = ()
  cot_y_hats: tuple[float, ...] = ()
  cot_sampled_scores: tuple[float | None, ...] = ()


class Judge:
  """A judge model with its tokenizer and score tokens (see the module docstring)."""

  def __init__(self, graphdef, params, tokenizer, *, output_format: str = "score_phrase",
               scores: str = "1-5", mesh=None, enable_thinking: bool | None = None,
               renormalize: bool = False, max_prompt_len: int = 2048, source: str = ""):
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.mesh = mesh if mesh is not None else shd.make_mesh({"data": 1},
                                                            devices=jax.devices()[:1])
    self.output_format = str(output_format)
    self.score_tokens = scores_lib.resolve_score_tokens(tokenizer, self.output_format,
                                                        scale=scores)
    self.scale = self.score_tokens.scale
    self.enable_thinking = enable_thinking
    self.renormalize = bool(renormalize)
    self.max_prompt_len = int(max_prompt_len)
    self.source = source
    pad = tokenizer.pad_token_id
    self.pad_id = int(pad if pad is not None else self.score_tokens.eos_id)

  def __repr__(self) -> str:
    return (f"Judge({self.source or 'in-memory'}, format={self.output_format}, scores "
            f"{self.scale.spec}, score tokens={list(self.score_tokens.token_ids)})")

  # --- loading -------------------------------------------------------------------------------

  @classmethod
  def from_workdir(cls, workdir: str, *, stage: str = "", best: bool = False, mesh=None
                   ) -> "Judge":
    """The parameters of a `real_jax.main` run: its last stage's last checkpoint (or `stage`;
    `best=True`: the best checkpoint by the validation split), with the run's tokenizer, output
    format and prompt rendering (from <workdir>/run.json)."""
    path = os.path.join(workdir, "run.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: pass the workdir of a real_jax.main run")
    with open(path) as f:
      run = json.load(f)
    # The attention backend is this machine's (`auto`), not the one the run trained with.
    cfg = models.Qwen3Config(**run["model"]).replace(attention=attention_lib.resolve("auto"))
    mesh = mesh if mesh is not None else shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
    graphdef, abstract = models.abstract_model(cfg)
    d, step, params = ckpt_lib.restore_run_params(
        workdir, abstract, models.param_shardings(abstract, mesh), stage=stage, best=best)
    data = run["config"]["data"]
    thinking = data.get("enable_thinking", "")
    return cls(graphdef, params, prompts_lib.load_tokenizer(run["tokenizer"]),
               output_format=data.get("output_format", "score_phrase"),
               scores=data.get("scores", "1-5"), mesh=mesh,
               enable_thinking=prompts_lib.thinking_value(thinking),
               renormalize=bool(run["config"].get("eval", {}).get("renormalize", False)),
               max_prompt_len=int(data.get("max_prompt_len", 2048)),
               source=f"{d} step {step}")

  @classmethod
  def from_hf(cls, hf_dir: str, *, tokenizer_dir: str = "", output_format: str | None = None,
              scores: str | None = None, dtype: str | None = None, mesh=None, **kw) -> "Judge":
    """A Hugging Face Qwen3 directory (weights + config), its tokenizer from the same directory
    or `tokenizer_dir`. The output format and score scale: as given, else the export's
    (real_jax_export.json), else score_phrase and 1-5."""
    meta_path = os.path.join(hf_dir, "real_jax_export.json")
    meta = {}
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        meta = json.load(f)
    output_format = output_format or meta.get("output_format", "score_phrase")
    scores = scores or meta.get("scores", "1-5")
    mesh = mesh if mesh is not None else shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
    cfg, _, params = hf_io.load_hf(hf_dir, mesh=mesh, dtype=dtype)
    graphdef, _ = models.abstract_model(cfg.replace(attention=attention_lib.resolve("auto")))
    tok = prompts_lib.load_tokenizer(tokenizer_dir or hf_dir)
    return cls(graphdef, params, tok, output_format=output_format, scores=scores, mesh=mesh,
               source=hf_dir, **kw)

  # --- grading -------------------------------------------------------------------------------

  def prompt_text(self, record: Mapping[str, Any]) -> str:
    """The judge prompt of a record (its "prompt", else built from its fields)."""
    if record.get("prompt"):
      return str(record["prompt"])
    return prompts_lib.build_judge_prompt(record, output_format=self.output_format,
                                          scale=self.scale)

  def settings(self, *, batch_size: int = 16, greedy: bool = False, temperature: float = 1.0,
               top_p: float = 0.9, max_new_tokens: int = 1024, invalid: str = "force",
               num_cots: int = 1) -> readout.EvalSettings:
    """The readout settings of a grading call (ValueError for one that cannot run)."""
    if int(num_cots) < 1:
      raise ValueError(f"num_cots={num_cots}: grade with at least one CoT per record")
    if int(max_new_tokens) < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}: allow at least one CoT token")
    if invalid not in readout.INVALID_READOUTS:
      raise ValueError(f"invalid={invalid!r}: use one of {readout.INVALID_READOUTS}")
    if not 0.0 < float(top_p) <= 1.0 or float(temperature) <= 0.0:
      raise ValueError(f"top_p={top_p} must be in (0, 1] and temperature={temperature} > 0")
    return readout.EvalSettings(batch_size=int(batch_size), greedy=bool(greedy),
                                temperature=float(temperature), top_p=float(top_p),
                                max_response_len=int(max_new_tokens),
                                renormalize=self.renormalize, invalid=invalid,
                                num_cots=int(num_cots))

  def prompt_ids(self, record: Mapping[str, Any], where: str = "record") -> list[int]:
    """The chat-rendered prompt ids of one record; ValueError naming `where` if it cannot be
    made into a prompt or is longer than max_prompt_len."""
    if not isinstance(record, Mapping):
      raise TypeError(f"{where} is a {type(record).__name__}, not a mapping: pass dicts with a "
                      "\"prompt\" (or the Prometheus fields: instruction, response, "
                      "reference_answer, rubric)")
    try:
      ids = prompts_lib.render_chat(self.tokenizer, self.prompt_text(record),
                                    enable_thinking=self.enable_thinking)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{where} cannot be made into a judge prompt ({e}); give it a "
                       "\"prompt\" or the Prometheus fields") from None
    if len(ids) > self.max_prompt_len:
      raise ValueError(f"{where} has a prompt of {len(ids)} tokens, longer than max_prompt_len="
                       f"{self.max_prompt_len}; pass a Judge with a larger max_prompt_len")
    return ids

  def grade(self, records: Sequence[Mapping[str, Any]], *, batch_size: int = 16,
            greedy: bool = False, temperature: float = 1.0, top_p: float = 0.9,
            max_new_tokens: int = 1024, seed: int = 0, invalid: str = "force",
            num_cots: int = 1) -> list[Grade]:
    """Grades `records` in batches: `num_cots` CoTs each (one: the paper's evaluation; T /
    top-p, or greedy), both readouts (k > 1: ŷ averaged, the sampled scores' vote, as
    `eval.num_cots`). The same seed gives the same grades, and a record's draws are keyed by
    (seed, its index in `records`, CoT number): its grade does not depend on `batch_size` or
    on the other records (up to float rounding of the batch's shapes). A prompt longer than the
    judge's max_prompt_len raises (grade it with a larger one; nothing is dropped)."""
    for i, r in enumerate(records):  # every record's type before any work
      if not isinstance(r, Mapping):
        raise TypeError(f"records[{i}] is a {type(r).__name__}, not a mapping: pass dicts with "
                        "a \"prompt\" (or the Prometheus fields: instruction, response, "
                        "reference_answer, rubric)")
    settings = self.settings(batch_size=batch_size, greedy=greedy, temperature=temperature,
                             top_p=top_p, max_new_tokens=max_new_tokens, invalid=invalid,
                             num_cots=num_cots)
    ids = [self.prompt_ids(r, f"records[{i}]") for i, r in enumerate(records)]
    out: list[Grade] = []
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      out += self.grade_ids(chunk, np.arange(start, start + len(chunk)), seed=seed,
                            settings=settings)
    return out

  def grade_ids(self, ids: Sequence[Sequence[int]], item_ids: Sequence[int], *, seed: int,
                settings: readout.EvalSettings, rows: int = 0) -> list[Grade]:
    """One batch of rendered prompts (`prompt_ids`), item n's draws keyed by (seed,
    item_ids[n], CoT number). `rows` > len(ids) pads the batch to that many prompts (copies of
    the first, discarded), so that every batch has one compiled shape (the server)."""
    ids = [list(x) for x in ids]
    n = len(ids)
    item_ids = np.asarray(item_ids, np.int32)
    if rows > n:
      ids += [ids[0]] * (rows - n)
      item_ids = np.concatenate([item_ids, np.full(rows - n, item_ids[0], np.int32)])
    width = layout.bucket_length(max(len(x) for x in ids),
                                 layout.power_of_two_buckets(self.max_prompt_len))
    pt, pm = layout.left_pad(ids, width, self.pad_id)
    score_fn = settings.score_fn(self.graphdef, self.score_tokens, self.mesh)
    r = readout.read_batch(self.graphdef, self.params, pt, pm, jax.random.PRNGKey(int(seed)),
                           settings=settings, score_tokens=self.score_tokens, score_fn=score_fn,
                           mesh=self.mesh, pad_id=self.pad_id, prompt_buckets=(width,),
                           item_ids=item_ids)
    values = self.score_tokens.values
    k = settings.num_cots if settings.readout != "direct" else 1
    out = []
    for i in range(n):
      cots = tuple(self.tokenizer.decode(r.cot_tokens(i, j)) for j in range(k))
      if k == 1:
        y_hats = (float(r.rail[i]),)
        sampled = (float(r.standard[i]) if r.standard_valid[i] else None,)
      else:
        y_hats = tuple(float(x) for x in r.cot_rail[i])
        sampled = tuple(float(x) if ok else None
                        for x, ok in zip(r.cot_standard[i], r.cot_standard_valid[i]))
      out.append(Grade(
          cot=cots[0], score_probs={float(v): float(p) for v, p in zip(values, r.score_probs[i])},
          score_mass=float(r.score_mass[i]), y_hat=float(r.y_hat[i]),
          sampled_score=float(r.standard[i]) if r.standard_valid[i] else None,
          status=readout.STATUS_NAMES[int(r.status[i])], cots=cots, cot_y_hats=y_hats,
          cot_sampled_scores=sampled))
    return out

