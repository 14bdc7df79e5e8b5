"""Reward-model benchmarks scored with a pointwise judge: accuracy from per-response grades.

Every response of a benchmark item is graded on its own with the same rubric prompt
(`data.preference_builders`: one record per response, its item in `group`); these functions turn
the grades (RAIL ŷ or the sampled score) back into each benchmark's numbers.

An item whose responses are not all graded (a response skipped as too long, `eval.max_items`
cutting it) is not scored: it is counted in `incomplete`, never read as a smaller item.

Tie rule: where the preferred response and the best other one get the same score, the item
counts 1/m, m the number of responses tied at the top (a pairwise tie: 1/2), and counts in the
tie rate. A preferred response strictly above every other counts 1, anything else 0.

Headline numbers, as each benchmark defines them (docs/judge.md names the sources):
  rewardbench    mean of the section scores (Chat, Chat Hard, Safety, Reasoning); a section
                 is its subsets' accuracies weighted by their item counts, except Reasoning,
                 where math-prm weighs as much as all the hep-* (code) subsets together
  rewardbench2   mean of the subsets' accuracies (best-of-4: the chosen above the 3 rejected;
                 Ties: every correct answer above every incorrect one)
  rm_bench       mean over domains of the 3 x 3 style-pair accuracy; Hard / Normal / Easy
                 are the matrix's upper triangle / diagonal / lower triangle, as in RM-Bench
  judgebench     accuracy over all pairs; per source category too
  ppe            accuracy over all pairs
"""
from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["top_credit", "group_responses", "benchmark_metrics", "PREFERENCE",
    "REWARDBENCH_SECTIONS"]

# RewardBench v1 sections (allenai/reward-bench, rewardbench/constants.py SUBSET_MAPPING).
REWARDBENCH_SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                  "hep-rust"),
}


def top_credit(preferred: Sequence[float], others: Sequence[float]) -> tuple[float, bool]:
  """(credit, tied) of one comparison: every preferred response must score above every other.

  The credit is 1 when min(preferred) > max(others); 1/m when the weakest preferred response
  ties the best other one (m the responses sharing that score); 0 below it."""
  lo, hi = min(preferred), max(others)
  if lo > hi:
    return 1.0, False
  if lo < hi:
    return 0.0, False
  m = sum(s == lo for s in preferred) + sum(s == hi for s in others)
  return 1.0 / m, True


def group_responses(records: Sequence[Mapping[str, Any]], scores: Sequence[float]
                    ) -> dict[str, dict[str, Any]]:
  """group -> {"subset", "responses": [(score, preferred, style, position)]} from graded
  records (each with the fields group, subset, preferred, style, position of
  `data.preference_builders`)."""
  text = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)
  out: dict[str, dict[str, Any]] = {}
  for rec, s in zip(records, scores):
    g = out.setdefault(text(rec["group"]), {"subset": text(rec["subset"]), "responses": [],
                                             "size": int(rec.get("group_size", 0))})
    g["responses"].append((float(s), int(rec["preferred"]), int(rec.get("style", -1)),
                           int(rec.get("position", 0))))
  return out


def _acc(credits: list[tuple[float, bool]]) -> dict[str, float]:
  if not credits:
    return {"accuracy": float("nan"), "tie_rate": float("nan"), "n": 0}
  return {"accuracy": float(np.mean([c for c, _ in credits])),
          "tie_rate": float(np.mean([t for _, t in credits])), "n": len(credits)}


def _item_credit(responses) -> tuple[float, bool]:
  pref = [s for s, p, *_ in responses if p == 1]
  rest = [s for s, p, *_ in responses if p == 0]
  return top_credit(pref, rest)


def complete(groups) -> tuple[dict[str, dict[str, Any]], int]:
  """(the items with every response graded and both a preferred and another response, the
  count of the others)."""
  ok = {k: g for k, g in groups.items()
        if (not g["size"] or len(g["responses"]) == g["size"])
        and any(p == 1 for _, p, *_ in g["responses"])
        and any(p == 0 for _, p, *_ in g["responses"])}
  return ok, len(groups) - len(ok)


def _per_subset(groups) -> dict[str, list[tuple[float, bool]]]:
  by = collections.defaultdict(list)
  for g in groups.values():
    by[g["subset"]].append(_item_credit(g["responses"]))
  return dict(by)


def _rewardbench(groups) -> dict[str, Any]:
  subsets = {k: _acc(v) for k, v in _per_subset(groups).items()}
  sections = {}
  for name, members in REWARDBENCH_SECTIONS.items():
    present = [m for m in members if m in subsets]
    if not present:
      continue
    if name == "Reasoning" and "math-prm" in present and len(present) > 1:
      code = [m for m in present if m != "math-prm"]
      n_code = sum(subsets[m]["n"] for m in code)
      code_acc = sum(subsets[m]["accuracy"] * subsets[m]["n"] for m in code) / n_code
      sections[name] = (subsets["math-prm"]["accuracy"] + code_acc) / 2
    else:
      n = sum(subsets[m]["n"] for m in present)
      sections[name] = sum(subsets[m]["accuracy"] * subsets[m]["n"] for m in present) / n
  unknown = sorted(set(subsets) - {m for ms in REWARDBENCH_SECTIONS.values() for m in ms})
  return {"headline": float(np.mean(list(sections.values()))) if sections else float("nan"),
          "headline_name": "mean of the section scores", "sections": sections,
          "subsets": subsets, "unscored_subsets": unknown}


def _mean_of_subsets(groups, name: str) -> dict[str, Any]:
  subsets = {k: _acc(v) for k, v in _per_subset(groups).items()}
  accs = [v["accuracy"] for v in subsets.values() if v["n"]]
  return {"headline": float(np.mean(accs)) if accs else float("nan"), "headline_name": name,
          "subsets": subsets}


def _rm_bench(groups) -> dict[str, Any]:
  """Per domain: the 3 x 3 matrix of (chosen style i, rejected style j) accuracies."""
  domains: dict[str, np.ndarray] = {}
  counts: dict[str, int] = collections.Counter()
  for g in groups.values():
    chosen = {st: s for s, p, st, _ in g["responses"] if p == 1}
    rejected = {st: s for s, p, st, _ in g["responses"] if p == 0}
    if sorted(chosen) != [0, 1, 2] or sorted(rejected) != [0, 1, 2]:
      raise ValueError(f"rm_bench item without 3 chosen and 3 rejected styles: {g}")
    m = domains.setdefault(g["subset"], np.zeros((3, 3)))
    for i in range(3):
      for j in range(3):
        m[i, j] += top_credit([chosen[i]], [rejected[j]])[0]
    counts[g["subset"]] += 1
  out = {}
  for d, m in domains.items():
    acc = m / counts[d]
    out[d] = {"matrix": acc.tolist(), "hard": float(acc[np.triu_indices(3, 1)].mean()),
              "normal": float(np.diag(acc).mean()),
              "easy": float(acc[np.tril_indices(3, -1)].mean()), "avg": float(acc.mean()),
              "n": counts[d]}
  mean = lambda k: float(np.mean([v[k] for v in out.values()])) if out else float("nan")
  return {"headline": mean("avg"), "headline_name": "mean over domains of the 3x3 accuracy",
          "hard": mean("hard"), "normal": mean("normal"), "easy": mean("easy"), "domains": out}


def _overall(groups, name: str) -> dict[str, Any]:
  credits = [_item_credit(g["responses"]) for g in groups.values()]
  a = _acc(credits)
  return {"headline": a["accuracy"], "headline_name": name, "tie_rate": a["tie_rate"],
          "n": a["n"], "subsets": {k: _acc(v) for k, v in _per_subset(groups).items()}}


PREFERENCE = {
    "rewardbench": _rewardbench,
    "rewardbench2": lambda g: _mean_of_subsets(g, "mean of the subsets' accuracies"),
    "rm_bench": _rm_bench,
    "judgebench": lambda g: _overall(g, "accuracy over all pairs"),
    "ppe": lambda g: _overall(g, "accuracy over all pairs"),
}


def benchmark_metrics(name: str, records: Sequence[Mapping[str, Any]], scores: Sequence[float]
                      ) -> dict[str, Any]:
  """The benchmark's numbers from graded records (`records[i]` graded `scores[i]`): its
  headline, per subset or domain, the tie rate. `name` is one of `PREFERENCE`."""
  groups, incomplete = complete(group_responses(records, scores))
  out = PREFERENCE[name](groups)
  credits = [_item_credit(g["responses"]) for g in groups.values()]
  out.setdefault("tie_rate", _acc(credits)["tie_rate"])
  out["items"] = len(groups)
  out["incomplete"] = incomplete
  return out
