"""Evaluation of a judge: one sampled CoT per item, the RAIL and standard readouts, scipy
correlations per split and their average, and result tables laid out like the paper's Table 2.

Readouts (the paper's §2; docs/architecture.md):
  * RAIL: y_hat = sum_k v_k pi(k | x, c) at the position right after the delimiter (full
    vocabulary softmax by default, `renormalize=True` for the score tokens only).
  * standard: the score token sampled at that position (argmax when greedy); a token that is not
    a score digit counts as "no valid score" and predicts the midpoint.

Items whose CoT never reached the delimiter (truncated, or EOS first) have no valid score; they
are counted (`invalid_frac`) and, by default (`invalid="force"`), read by both readouts after
appending the delimiter to their CoT so every item still has a prediction (`invalid="midpoint"`
predicts the middle score for both readouts instead). `results.md` also compares the readouts on
the items whose CoT reached the delimiter only. With `readout="direct"` (RAFT models) there is no CoT: the delimiter
follows the prompt directly.

Outputs in the workdir: `eval/<tag>.json` (metrics), `eval/<tag>_predictions.jsonl` (one line
per item), and `results.json` / `results.md` collecting every evaluated model of the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from scipy import stats

from real_jax import preference
from real_jax import sharding as shd
from real_jax.data.loading import PREFERENCE_BENCHMARKS
from real_jax.readout import EvalSettings, read_batch
from real_jax.train import data_utils
from real_jax.train.methods import get_method
from real_jax.train.metrics import Progress

# Evaluation draws come from PRNGKey(seed + 1000): apart from the run's other keys (model init
# PRNGKey(seed), TRACT's self-CoTs seed + 7), and the same for every model a run evaluates.
EVAL_KEY_OFFSET = 1000

__all__ = ["READOUTS", "METRICS", "SPLIT_TITLES", "correlations", "summarize", "MIN_ITEMS",
    "FEW_ITEMS_MARK", "FEW_ITEMS_NOTE", "splits_of", "split_title", "metric_cell", "avg_cell",
    "percent_cell", "results_table", "has_few_items", "summary_table", "rows_table",
    "valid_only_rows", "render_results", "check_markdown_table", "read_predictions", "write_eval",
    "update_results", "evaluate_params", "split_counts", "describe_counts", "eval_settings",
    "Evaluator"]

READOUTS = ("rail", "standard")
METRICS = ("pearson", "spearman", "kendall")

# Column titles of the paper's benchmarks (Table 2); other splits keep their own names.
SPLIT_TITLES = {
    "feedback_bench": "FB Bench", "flask": "FLASK", "vicuna_bench": "Vicuna Bench",
    "mt_bench": "MT Bench", "test": "Test (ID)", "test_ood_hard": "OOD hard",
    "test_ood_rubric": "OOD rubric",
}


# ---------------------------------------------------------------------------------------------
# Metrics (host side, scipy)


def correlations(pred: Sequence[float], target: Sequence[float]) -> dict[str, float]:
  """Pearson, Spearman and Kendall (tau-b) of predictions vs targets (scipy.stats), plus
  MSE / L1 and n. A correlation is NaN when either side is constant or n < 2."""
  p = np.asarray(pred, np.float64)
  t = np.asarray(target, np.float64)
  out = {"n": int(p.size)}
  degenerate = p.size < 2 or np.ptp(p) == 0 or np.ptp(t) == 0
  for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr),
                   ("kendall", stats.kendalltau)):
    out[name] = float("nan") if degenerate else float(fn(p, t)[0])
  out["mse"] = float(np.mean((p - t) ** 2)) if p.size else float("nan")
  out["l1"] = float(np.mean(np.abs(p - t))) if p.size else float("nan")
  return out


def summarize(per_split: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """Metrics per split and readout, and their averages over splits.

  Args:
    per_split: split -> {"target" [N], "rail" [N], "standard" [N], "valid" [N] bool (a valid
      score was produced), "standard_valid" [N] bool (the sampled token was a score digit)}.

  Returns:
    {"splits": {split: {"rail": {...}, "standard": {...}, "invalid_frac", "n",
                        "valid_only": {"rail", "standard", "n"}}},
     "avg": {"rail": {pearson, spearman, kendall, mse, l1}, "standard": {...}, "invalid_frac",
             "valid_only": {"rail", "standard"}}}
    "valid_only" are the same metrics on the items whose CoT reached the delimiter (the rule for
    the others, force or midpoint, then plays no part in the comparison of the readouts).
  """
  out: dict[str, Any] = {"splits": {}, "avg": {}}
  for split, d in per_split.items():
    s = {r: correlations(d[r], d["target"]) for r in READOUTS}
    s["n"] = int(len(d["target"]))
    s["invalid_frac"] = float(1.0 - np.mean(d["valid"])) if len(d["valid"]) else float("nan")
    s["standard_invalid_frac"] = (float(1.0 - np.mean(d["standard_valid"]))
                                  if len(d["standard_valid"]) else float("nan"))
    valid = np.asarray(d["valid"], bool)
    s["valid_only"] = {r: correlations(np.asarray(d[r])[valid], np.asarray(d["target"])[valid])
                       for r in READOUTS}
    s["valid_only"]["n"] = int(valid.sum())
    out["splits"][split] = s
  for r in READOUTS:
    out["avg"][r] = {m: _mean([out["splits"][s][r][m] for s in out["splits"]])
                     for m in METRICS + ("mse", "l1")}
  out["avg"]["valid_only"] = {
      r: {m: _mean([v["valid_only"][r][m] for v in out["splits"].values()])
          for m in METRICS + ("mse", "l1")} for r in READOUTS}
  out["avg"]["invalid_frac"] = _mean([v["invalid_frac"] for v in out["splits"].values()])
  out["avg"]["standard_invalid_frac"] = _mean(
      [v["standard_invalid_frac"] for v in out["splits"].values()])
  return out


def _mean(xs: Sequence[float]) -> float:
  xs = [x for x in xs if x is not None]
  return float(np.mean(xs)) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(x: float, scale: float = 100.0, digits: int = 1) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  return f"{x * scale:.{digits}f}"


# A correlation over fewer items is flagged in the tables (at n = 30 the 95% interval of r = 0.5
# is about [0.17, 0.73]).
MIN_ITEMS = 30
FEW_ITEMS_MARK = "†"
FEW_ITEMS_NOTE = (f"{FEW_ITEMS_MARK} computed on fewer than {MIN_ITEMS} items: the correlation's "
                  "confidence interval is wide.")


def splits_of(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
  """The evaluation splits of all rows, in first-seen order."""
  splits: list[str] = []
  for _, s in rows:
    for sp in s["splits"]:
      if sp not in splits:
        splits.append(sp)
  return splits


def split_title(split: str, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
  """The column title of `split`: its name and the number of items, "FLASK (n=200)" (a range
  when the rows differ)."""
  ns = sorted({int(s["splits"][split]["n"]) for _, s in rows if split in s["splits"]})
  n = "" if not ns else f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}–{ns[-1]})"
  return SPLIT_TITLES.get(split, split) + n


def metric_cell(split_summary: Mapping[str, Any], readout: str, metric: str) -> str:
  """`metric` x 100 (MSE raw), marked when the correlation rests on fewer than MIN_ITEMS items."""
  value = split_summary[readout][metric]
  if metric in ("mse", "l1"):
    return _fmt(value, 1.0, 3)
  few = split_summary[readout].get("n", MIN_ITEMS) < MIN_ITEMS and _fmt(value) != "–"
  return _fmt(value) + (f" {FEW_ITEMS_MARK}" if few else "")


def avg_cell(summary: Mapping[str, Any], readout: str, metric: str) -> str:
  """The average over splits of `metric` x 100 (MSE raw), as the tables print it."""
  return _fmt(summary["avg"][readout][metric], *((1.0, 3) if metric in ("mse", "l1") else ()))


def percent_cell(fraction: float | None) -> str:
  """A fraction as the tables print it: "12.5%" ("–%" when absent)."""
  return f"{_fmt(fraction)}%"


def results_table(rows: Sequence[tuple[str, Mapping[str, Any]]], *, metric: str = "pearson",
                  readouts: Sequence[str] = READOUTS) -> str:
  """Markdown table like the paper's Table 2: one row per (model, readout), one column per
  evaluation split (its title gives the number of items) plus their average, `metric` x 100;
  a value computed on fewer than MIN_ITEMS items is marked †.

  Args:
    rows: (model name, `summarize` output) pairs, in display order.
    metric: pearson | spearman | kendall (x 100) | mse (raw).
    readouts: which readouts to show as rows.
  """
  splits = splits_of(rows)
  head = ["Model", "Readout"] + [split_title(sp, rows) for sp in splits] + ["Avg"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(splits) + 1)) + "|"]
  for name, s in rows:
    for r in readouts:
      cells = [name, "RAIL (ŷ)" if r == "rail" else "standard (sampled)"]
      cells += [metric_cell(s["splits"][sp], r, metric) if sp in s["splits"] else "–"
                for sp in splits]
      cells.append(avg_cell(s, r, metric))
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def has_few_items(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
  return any(v[r].get("n", MIN_ITEMS) < MIN_ITEMS for _, s in rows for v in s["splits"].values()
             for r in READOUTS)


def summary_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
  """Averages over splits of every metric, both readouts, and the fraction without a score."""
  head = ["Model", "Readout", "Pearson", "Spearman", "Kendall", "MSE", "no valid score"]
  lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
  for name, s in rows:
    for r in READOUTS:
      a = s["avg"][r]
      inv = s["avg"]["invalid_frac"] if r == "rail" else s["avg"]["standard_invalid_frac"]
      lines.append("| " + " | ".join([
          name, "RAIL (ŷ)" if r == "rail" else "standard (sampled)", _fmt(a["pearson"]),
          _fmt(a["spearman"]), _fmt(a["kendall"]), _fmt(a["mse"], 1.0, 3),
          percent_cell(inv)]) + " |")
  return "\n".join(lines)


def rows_table(rows: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> str:
  """Which checkpoint each row is, how it was trained, and the items behind each split."""
  lines = ["| Model | Checkpoint | Training | Items per split |", "|---|---|---|---|"]
  for name, s, info in rows:
    items = "; ".join(f"{SPLIT_TITLES.get(sp, sp)}: {describe_counts(v['counts'])}"
                      for sp, v in s["splits"].items() if "counts" in v)
    cell = lambda x: str(x or "–").replace("|", "/").replace("\n", " ")
    lines.append(f"| {cell(name)} | {cell(info.get('checkpoint'))} | "
                 f"{cell(info.get('training'))} | {cell(items)} |")
  return "\n".join(lines)


def valid_only_rows(rows: Sequence[tuple[str, Mapping[str, Any]]]
                    ) -> list[tuple[str, Mapping[str, Any]]]:
  """The rows restricted to the items whose CoT reached the delimiter, in `results_table`'s
  layout (rows of results written before this comparison existed are left out)."""
  out = []
  for name, s in rows:
    if all("valid_only" in v for v in s["splits"].values()) and "valid_only" in s["avg"]:
      out.append((name, {"splits": {sp: v["valid_only"] for sp, v in s["splits"].items()},
                         "avg": s["avg"]["valid_only"]}))
  return out


def preference_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
  """Reward-model benchmarks (`real_jax.preference`): the headline accuracy of each benchmark
  split from RAIL ŷ and from the sampled scores, the tie rate and the items compared."""
  head = ["Model", "Benchmark", "Headline", "RAIL (ŷ)", "standard (sampled)",
          "ties: RAIL / standard", "items"]
  lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
  for name, s in rows:
    for sp, v in s["splits"].items():
      p = v.get("preference")
      if not p:
        continue
      r, st = p["rail"], p["standard"]
      lines.append("| " + " | ".join([
          name, sp, r["headline_name"], _fmt(r["headline"]), _fmt(st["headline"]),
          f"{percent_cell(r['tie_rate'])} / {percent_cell(st['tie_rate'])}",
          str(r["items"])]) + " |")
  return "\n".join(lines) if len(lines) > 2 else ""


def render_results(rows: Sequence[tuple], *, note: str = "") -> str:
  """The markdown written to `results.md`: the Table-2-style Pearson table, the summary, and per
  row its checkpoint, training settings and item counts. `rows`: (name, summary[, info])."""
  full = [(r[0], r[1], r[2] if len(r) > 2 else {}) for r in rows]
  pairs = [(n, s) for n, s, _ in full]
  parts = ["## Pearson r x 100 per evaluation split (Table 2 layout)", "",
           results_table(pairs, metric="pearson"), ""]
  if has_few_items(pairs):
    parts += [FEW_ITEMS_NOTE, ""]
  parts += ["## Averages over splits (x 100; MSE raw)", "", summary_table(pairs), ""]
  valid = valid_only_rows(pairs)
  if valid:
    parts += ["## Pearson r x 100 on the items whose CoT reached the delimiter", "",
              "Both readouts on the same items, none of them read by the rule for invalid CoTs.",
              "", results_table(valid, metric="pearson"), ""]
  prefs = preference_table(pairs)
  if prefs:
    parts += ["## Reward benchmarks: accuracy x 100 (each response graded on its own)", "",
              "A tie between the preferred response and the best other one counts 1/m (m "
              "responses tied at the top; a pair: 1/2). Subsets, sections and domains: "
              "eval/<tag>.json.", "", prefs, ""]
  parts += ["## Rows", "", rows_table(full)]
  if note:
    parts += ["", note]
  return "\n".join(parts) + "\n"


def check_markdown_table(text: str) -> list[list[str]]:
  """Parses a markdown pipe table; raises ValueError if rows have different column counts or the
  separator row is missing. Returns the rows' cells (header first, separator dropped)."""
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  if len(lines) < 2:
    raise ValueError("a table needs a header and a separator row")
  rows = []
  for i, line in enumerate(lines):
    if not (line.startswith("|") and line.endswith("|")):
      raise ValueError(f"line {i} is not a table row: {line!r}")
    cells = [c.strip() for c in line[1:-1].split("|")]
    rows.append(cells)
  width = len(rows[0])
  for i, r in enumerate(rows):
    if len(r) != width:
      raise ValueError(f"row {i} has {len(r)} cells, header has {width}")
  if not all(set(c) <= set(":-") and "-" in c for c in rows[1]):
    raise ValueError(f"second line is not a separator row: {lines[1]!r}")
  return [rows[0]] + rows[2:]


# ---------------------------------------------------------------------------------------------
# Result files


def read_predictions(workdir: str, tag: str) -> dict[str, dict[str, np.ndarray]]:
  """split -> {index, target, rail, standard, valid, ...} [N] arrays from
  <workdir>/eval/<tag>_predictions.jsonl (what `write_eval` wrote), rows in file order."""
  cols: dict[str, dict[str, list]] = {}
  with open(os.path.join(workdir, "eval", f"{tag}_predictions.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      c = cols.setdefault(r.pop("split"), {})
      for k in ("index", "target", "rail", "standard", "valid"):
        v = r.get(k)
        c.setdefault(k, []).append(np.nan if v is None else v)
  return {sp: {k: np.asarray(v, np.float64) for k, v in c.items()} for sp, c in cols.items()}


def write_eval(workdir: str, tag: str, summary: Mapping[str, Any], predictions: Mapping[str, Any]
               | None = None, extra: Mapping[str, Any] | None = None) -> str:
  """Writes eval/<tag>.json (and eval/<tag>_predictions.jsonl); returns the JSON path."""
  d = os.path.join(workdir, "eval")
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, f"{tag}.json")
  with open(path, "w") as f:
    json.dump({"tag": tag, **(extra or {}), "summary": summary}, f, indent=2, default=_json_default)
  if predictions:
    with open(os.path.join(d, f"{tag}_predictions.jsonl"), "w") as f:
      for split, d_ in predictions.items():
        n = len(d_["target"])
        for i in range(n):
          row = {"split": split}
          for k, v in d_.items():
            row[k] = _json_default(v[i]) if isinstance(v, (np.ndarray, list)) else v
          f.write(json.dumps(row, default=_json_default) + "\n")
  return path


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def update_results(workdir: str, name: str, summary: Mapping[str, Any], *,
                   info: Mapping[str, Any] | None = None, note: str = "") -> str:
  """Adds/replaces `name` in <workdir>/results.json and rewrites results.md; returns the markdown."""
  path = os.path.join(workdir, "results.json")
  data = {"rows": []}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  data["rows"] = [r for r in data["rows"] if r["name"] != name]
  data["rows"].append({"name": name, "summary": summary, "info": dict(info or {}),
                       "time": time.time()})
  with open(path, "w") as f:
    json.dump(data, f, indent=2, default=_json_default)
  md = render_results([(r["name"], r["summary"], r.get("info", {})) for r in data["rows"]],
                      note=note)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(md)
  return md


# ---------------------------------------------------------------------------------------------
# Generation + readouts on a model


def evaluate_params(graphdef, params, sources: Mapping[str, Sequence[Mapping[str, Any]]], *,
                    config, tokenizer, score_tokens, mesh, key, settings: EvalSettings,
                    delim_start: Sequence[int] | None = None, progress_name: str = "eval"
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Samples one CoT per item of every split, reads both scores, and summarizes.

  Args:
    graphdef, params: the model.
    sources: split name -> records (a `JudgeSource` or list of records).
    config: the run config (prompt/bucket options of `data`).
    tokenizer, score_tokens: the judge's tokenizer and its `ScoreTokens`.
    mesh: device mesh; key: PRNG key (the same key gives the same evaluation).
    settings: `EvalSettings`.
    delim_start: the delimiter's ids at the start of a response (direct readout).

  Returns:
    (summary as in `summarize`, predictions: split -> arrays per item).
  """
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else score_tokens.eos_id
  score_fn = settings.score_fn(graphdef, score_tokens, mesh)
  per_split, preds, counts = {}, {}, {}
  for s_i, (split, source) in enumerate(sources.items()):
    available = len(source)
    if settings.max_items and len(source) > settings.max_items:
      source = [source[i] for i in range(settings.max_items)]
    batcher = data_utils.make_batcher(config, source, tokenizer, score_tokens,
                                      batch_size=settings.batch_size, with_targets=False,
                                      shuffle=False, num_epochs=1, drop_remainder=False)
    n_batches = -(-len(source) // settings.batch_size)
    cols = {k: [] for k in ("index", "target", "rail", "standard", "valid", "standard_valid",
                            "y_hat", "length", "status", "score_probs")}
    texts = []
    with Progress(f"{progress_name}:{split}", n_batches, every=max(1, n_batches // 4),
                  unit="batch") as prog:
      prog.phase = f"sampling {settings.batch_size} CoTs and reading their scores"
      for b_i, b in enumerate(batcher):
        k = jax.random.fold_in(jax.random.fold_in(key, s_i), b_i)
        r = read_batch(graphdef, params, b["prompt_tokens"], b["prompt_mask"], k,
                       settings=settings, score_tokens=score_tokens, score_fn=score_fn, mesh=mesh,
                       pad_id=pad_id, delim_start=delim_start,
                       prompt_buckets=data_utils.prompt_buckets(config))
        keep = b["valid"].astype(bool)
        cols["index"].append(b["index"][keep])
        cols["target"].append(b["target"][keep])
        for name in ("rail", "y_hat", "standard", "valid", "standard_valid", "length", "status",
                     "score_probs"):
          cols[name].append(getattr(r, name)[keep])
        if r.response is not None:
          texts += [tokenizer.decode(r.cot_tokens(i)) for i in np.nonzero(keep)[0]]
        prog.update(b_i + 1)
    d = {k: (np.concatenate(v) if v else np.zeros((0,), np.float32)) for k, v in cols.items()}
    if not cols["score_probs"]:
      d["score_probs"] = np.zeros((0, len(score_tokens.values)), np.float32)
    if texts:
      d["cot"] = np.asarray(texts, dtype=object)
    per_split[split] = d
    preds[split] = d
    counts[split] = split_counts(available, len(source), len(d["target"]), batcher.stats)
    if counts[split]["skipped"]:
      logging.warning("[%s:%s] %s", progress_name, split, describe_counts(counts[split]))
  summary = summarize(per_split)
  for split, c in counts.items():
    summary["splits"][split]["counts"] = c
  for split, source in sources.items():
    bench = benchmark_of(split)
    if bench and len(preds[split]["index"]):
      recs = [source[int(i)] for i in preds[split]["index"]]
      summary["splits"][split]["preference"] = {
          r: preference.benchmark_metrics(bench, recs, preds[split][r]) for r in READOUTS}
  return summary, preds


def benchmark_of(split: str) -> str | None:
  """The reward-model benchmark an evaluation split reads ("rewardbench" or
  "rewardbench:test"), or None."""
  name = split.split(":")[0]
  return name if name in PREFERENCE_BENCHMARKS else None


def split_counts(available: int, read: int, scored: int, stats: Mapping[str, int]
                 ) -> dict[str, Any]:
  """How many items of a split were read, scored and skipped (by reason), and truncated.

  `available`: items in the split; `read`: items considered (at most eval.max_items)."""
  skipped = {k: int(v) for k, v in sorted(stats.items()) if v and k != "prompt_truncated"}
  return {"available": int(available), "read": int(read), "scored": int(scored),
          "skipped": skipped, "skipped_total": int(sum(skipped.values())),
          "truncated": int(stats.get("prompt_truncated", 0))}


def describe_counts(c: Mapping[str, Any]) -> str:
  """One line: "scored 950 of 1000 read (skipped 50: prompt_too_long 50)"."""
  text = f"scored {c['scored']} of {c['read']} read"
  if c["read"] < c["available"]:
    text += f" (of {c['available']}; eval.max_items)"
  if c["skipped"]:
    why = ", ".join(f"{k} {v}" for k, v in c["skipped"].items())
    text += (f"; SKIPPED {c['skipped_total']} ({why}): the correlation is on a subset; raise "
             "data.max_prompt_len or set data.overlong=truncate")
  if c.get("truncated"):
    text += f"; {c['truncated']} prompts left-truncated to data.max_prompt_len"
  return text


# ---------------------------------------------------------------------------------------------
# A run's evaluations


def eval_settings(config, periodic: bool = False) -> EvalSettings:
  """The settings of the config's `eval` block (periodic evaluations read at most
  `eval.periodic_max_items` items per split)."""
  e = config.eval
  readout = e.readout or get_method(config.method).readout
  max_items = (e.periodic_max_items or e.max_items) if periodic else e.max_items
  return EvalSettings(batch_size=e.batch_size, max_items=max_items, readout=readout,
                      greedy=e.greedy, temperature=e.temperature, top_p=e.top_p,
                      max_response_len=e.max_response_len, renormalize=e.renormalize,
                      invalid=e.invalid, num_cots=e.num_cots)


# The method behind a results row, by its evaluation tag (the final row is the run's method).
_ROW_METHOD = {"initial": "none", "warmup": "sft"}


class Evaluator:
  """Evaluates parameters on a run's evaluation splits (or its validation split) with the
  config's `eval` settings, writes eval/<tag>.json, and adds named rows to results.md.

  Every evaluation of a run draws the same random numbers (seed + 1000), so two models are
  compared on the same CoT draws."""

  def __init__(self, config, workdir: str, *, graphdef, mesh, tokenizer, score_tokens,
               delim_start: Sequence[int], eval_sources: Mapping[str, Any], val_source=None):
    self.config, self.workdir, self.graphdef, self.mesh = config, workdir, graphdef, mesh
    self.tokenizer, self.score_tokens, self.delim_start = tokenizer, score_tokens, delim_start
    self.eval_sources, self.val_source = dict(eval_sources), val_source

  def __call__(self, params, *, name: str | None, tag: str, periodic: bool = False,
               readout: str | None = None, validation: bool = False, checkpoint: str = "",
               training: str = "") -> dict[str, Any]:
    """Evaluates `params` on the eval splits (or, `validation=True`, on the validation split
    carved from the training data); writes eval/<tag>.json and (if `name`) a results row
    labelled with its `checkpoint` and `training` description. Returns the summary."""
    settings = eval_settings(self.config, periodic)
    if validation:
      settings = dataclasses.replace(settings, max_items=0)  # the whole validation split
    if readout:
      settings = dataclasses.replace(settings, readout=readout)
    sources = {data_utils.VAL_SPLIT: self.val_source} if validation else self.eval_sources
    t0 = time.time()
    key = jax.random.PRNGKey(self.config.seed + EVAL_KEY_OFFSET)  # the same draws for every model
    summary, preds = evaluate_params(
        self.graphdef, params, sources, config=self.config, tokenizer=self.tokenizer,
        score_tokens=self.score_tokens, mesh=self.mesh, key=key, settings=settings,
        delim_start=self.delim_start, progress_name=f"eval:{tag}")
    info = {"readout": settings.readout, "greedy": settings.greedy,
            "temperature": settings.temperature, "top_p": settings.top_p,
            "renormalize": settings.renormalize, "invalid": settings.invalid,
            "num_cots": settings.num_cots if settings.readout != "direct" else 1,
            "seconds": round(time.time() - t0, 1), "tag": tag, "checkpoint": checkpoint,
            "training": training, "method": _ROW_METHOD.get(tag, self.config.method),
            "counts": {sp: v.get("counts") for sp, v in summary["splits"].items()}}
    if shd.is_main_process():
      write_eval(self.workdir, tag, summary, None if periodic else preds, extra=info)
    a = summary["avg"]
    logging.info("[eval %s] avg x 100: RAIL pearson %s spearman %s kendall %s | standard "
                 "pearson %s | no valid score %.1f%% (%.0fs)", tag, _fmt(a["rail"]["pearson"]),
                 _fmt(a["rail"]["spearman"]), _fmt(a["rail"]["kendall"]),
                 _fmt(a["standard"]["pearson"]), 100 * a["invalid_frac"], time.time() - t0)
    for sp, v in summary["splits"].items():
      logging.info("[eval %s] %s: RAIL pearson x 100 %s; %s", tag, sp,
                   metric_cell(v, "rail", "pearson"), describe_counts(v["counts"]))
    if name and shd.is_main_process():
      update_results(self.workdir, name, summary, info=info, note=self._table_note(settings))
    return summary

  def periodic(self, params, *, tag: str, validation: bool) -> dict[str, Any]:
    """An evaluation during training (`train.runner.StageRunner`'s `evaluate`): no results row,
    no predictions file."""
    return self(params, name=None, tag=tag, periodic=True, validation=validation)

  def _table_note(self, settings: EvalSettings) -> str:
    how = "greedy" if settings.greedy else f"T={settings.temperature}, top-p={settings.top_p}"
    norm = ("renormalised over the score tokens" if settings.renormalize else
            "full-vocabulary softmax, not renormalised (authors' choice)")
    invalid = ("read by both readouts at the delimiter appended to the CoT" if
               settings.invalid == "force" else "given the midpoint score by both readouts")
    k = settings.num_cots
    if settings.readout == "direct":
      cots = "No CoT (direct readout: the delimiter right after the prompt)"
      rail, std = "RAIL ŷ =", "standard = the score token sampled there"
    elif k == 1:
      cots = f"One {'greedy' if settings.greedy else 'sampled'} CoT per item ({how})"
      rail, std = "RAIL ŷ =", "standard = the sampled score token"
    else:
      kind = "greedy" if settings.greedy else "sampled"
      cots = f"{k} {kind} CoTs per item ({how}; eval.num_cots={k})"
      rail = "RAIL ŷ = the mean over the CoTs of"
      std = ("standard = the vote of the CoTs' sampled scores (a tie: the score nearest the tied "
             "scores' mean, halves up)")
    return (f"{cots}; {rail} Σ k·p(k) at the score position, {norm}; {std}. "
            f"CoTs without the delimiter are {invalid} (eval.invalid={settings.invalid}). "
            f"Data: {self.config.data.name}.")
