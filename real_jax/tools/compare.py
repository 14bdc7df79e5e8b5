r"""One Table-2 layout over several runs: `python -m real_jax.tools.compare WORKDIR...`.

  python -m real_jax.tools.compare workdirs/synthetic workdirs/synthetic_controls/*
  python -m real_jax.tools.compare W1 W2 --metrics pearson,mse --readouts rail --out cmp
      # also writes cmp.md and cmp.csv

Reads each workdir's `results.json` (every evaluated model of that run) and `run.json` (its
method) and prints, per metric, one table: a row per (run, model, readout), a column per
evaluation split (its title gives the number of items; a correlation on fewer than 30 items is
marked †) plus the average. Then a table of what each row is: its method, the checkpoint
evaluated, the items per split and the share without a valid score. The CSV has one line per
(run, model, readout, split) with every metric, the average as split "avg".

With exactly two workdirs A and B it then prints their paired difference, A − B, per evaluation
split (real benchmarks included), readout and metric, with a 95% bootstrap interval over items
(`real_jax.bootstrap.paired_difference`: the same item draws for both judges) from the two runs'
per-item predictions (eval/<tag>_predictions.jsonl); "*" marks an interval that excludes 0.
The model of each run is its final one (or the one `--models` leaves); both runs must have been
evaluated on the same items of a split (same indices and targets), else the report says why
there is no paired section.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from real_jax import bootstrap
from real_jax import evaluate as ev
from real_jax.train.methods import METHODS

__all__ = ["METRICS", "TITLES", "READOUT_TITLES", "CompareError", "load_rows", "name_runs",
    "metric_table", "rows_table", "FINAL_TAGS", "pick_row", "paired_predictions", "paired_table",
    "render", "CSV_FIELDS", "to_csv", "main"]

METRICS = ("pearson", "spearman", "kendall", "mse")
TITLES = {"pearson": "Pearson r x 100", "spearman": "Spearman ρ x 100",
          "kendall": "Kendall τ_b x 100", "mse": "MSE of the prediction (raw)"}
READOUT_TITLES = {"rail": "RAIL (ŷ)", "standard": "standard (sampled)"}


class CompareError(ValueError):
  """A workdir that cannot be compared (no results yet, an unreadable file)."""


def load_rows(workdir: str) -> list[dict[str, Any]]:
  """The evaluated models of one run: dicts with run, workdir, name, method, summary, info."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise CompareError(f"{workdir} has no results.json (no model of that run was evaluated yet)")
  try:
    with open(path) as f:
      data = json.load(f)
    run_method = ""
    if os.path.exists(os.path.join(workdir, "run.json")):
      with open(os.path.join(workdir, "run.json")) as f:
        run_method = json.load(f).get("config", {}).get("method", "")
  except (OSError, json.JSONDecodeError) as e:
    raise CompareError(f"{path}: {e}") from None
  run = os.path.basename(os.path.normpath(workdir))
  return [{"run": run, "workdir": workdir, "name": r["name"],
           "method": r.get("info", {}).get("method") or run_method or "?",
           "summary": r["summary"], "info": r.get("info", {})} for r in data.get("rows", [])]


def name_runs(rows: list[dict[str, Any]]) -> None:
  """Runs are named by their directory's name, or by the path given where two names collide."""
  names: dict[str, set[str]] = {}
  for r in rows:
    names.setdefault(r["run"], set()).add(os.path.normpath(r["workdir"]))
  for r in rows:
    if len(names[r["run"]]) > 1:
      r["run"] = os.path.normpath(r["workdir"])


def _label(row: dict[str, Any]) -> str:
  return f"{row['run']} / {row['name']}"


def metric_table(rows: Sequence[dict[str, Any]], metric: str, readouts: Sequence[str]) -> str:
  """Markdown: run, model, method, readout, one column per split (n in its title) and Avg."""
  pairs = [(_label(r), r["summary"]) for r in rows]
  splits = ev.splits_of(pairs)
  head = (["Run", "Model", "Method", "Readout"] + [ev.split_title(sp, pairs) for sp in splits]
          + ["Avg"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(splits) + 1)]
  for r in rows:
    s = r["summary"]
    for ro in readouts:
      cells = [r["run"], r["name"], r["method"], READOUT_TITLES[ro]]
      cells += [ev.metric_cell(s["splits"][sp], ro, metric) if sp in s["splits"] else "–"
                for sp in splits]
      cells.append(ev.avg_cell(s, ro, metric))
      lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
  return "\n".join(lines)


def rows_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: which checkpoint each row is, the items per split and the share without a score."""
  lines = ["| Run | Model | Method | Checkpoint | Items per split (n) | No valid score |",
           "|---|---|---|---|---|---:|"]
  for r in rows:
    s = r["summary"]
    items = "; ".join(f"{ev.SPLIT_TITLES.get(sp, sp)} {v['n']}" for sp, v in s["splits"].items())
    cells = [r["run"], r["name"], r["method"], r["info"].get("checkpoint") or "–", items,
             ev.percent_cell(s["avg"].get("invalid_frac"))]
    lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
  return "\n".join(lines)


FINAL_TAGS = ("final", "eval")  # the tag of a run's final model (method=eval: "eval")


def pick_row(rows: Sequence[dict[str, Any]], run: str) -> dict[str, Any]:
  """The row of `run` to pair: its only row, else its final model's, else its last."""
  mine = [r for r in rows if r["run"] == run]
  if len(mine) == 1:
    return mine[0]
  final = [r for r in mine if r["info"].get("tag") in FINAL_TAGS]
  return (final or mine)[-1]


def _tag(row: dict[str, Any]) -> str:
  tag = row["info"].get("tag")
  if tag:
    return tag
  # Results written before rows named their tag: the tag each row name is written under.
  return {"initial model": "initial", "warm-up (SFT)": "warmup"}.get(
      row["name"], getattr(METHODS.get(row["method"]), "final_tag", "final"))


def paired_predictions(a: dict[str, Any], b: dict[str, Any]
                       ) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
  """split -> (A's, B's predictions) on the splits both rows were evaluated on, items aligned
  by index. Raises CompareError where a file is missing or the items differ."""
  preds = []
  for r in (a, b):
    path = os.path.join(r["workdir"], "eval", f"{_tag(r)}_predictions.jsonl")
    if not os.path.exists(path):
      raise CompareError(f"{path} is missing: the per-item predictions of {_label(r)} (paired "
                         "differences need them; re-run its evaluation)")
    preds.append(ev.read_predictions(r["workdir"], _tag(r)))
  out = {}
  for sp in [s for s in preds[0] if s in preds[1]]:
    pa, pb = (p[sp] for p in preds)
    oa, ob = np.argsort(pa["index"], kind="stable"), np.argsort(pb["index"], kind="stable")
    pa, pb = ({k: v[o] for k, v in p.items()} for p, o in ((pa, oa), (pb, ob)))
    if not (np.array_equal(pa["index"], pb["index"])
            and np.allclose(pa["target"], pb["target"], equal_nan=True)):
      raise CompareError(f"split {sp!r}: {_label(a)} and {_label(b)} were evaluated on different "
                         f"items ({len(pa['index'])} vs {len(pb['index'])}, or other indices or "
                         "targets); evaluate both with the same data and eval.max_items")
    out[sp] = (pa, pb)
  if not out:
    raise CompareError(f"{_label(a)} and {_label(b)} share no evaluation split")
  return out


def paired_table(a: dict[str, Any], b: dict[str, Any], *, metrics: Sequence[str] = METRICS,
                 readouts: Sequence[str] = ev.READOUTS, n_boot: int = 1000) -> str:
  """Markdown: A − B per split and readout, each metric with its 95% paired interval."""
  pairs = paired_predictions(a, b)
  lines = [f"## Paired difference: A − B, A = {_label(a)}, B = {_label(b)}", "",
           f"95% bootstrap interval over items ({n_boot} resamples, the same draws for A and "
           "B); correlations × 100; * = the interval excludes 0 at the precision shown.", "",
           "| Split (n) | Readout | " + " | ".join(TITLES[m] for m in metrics) + " |",
           "|---|---|" + "---:|" * len(metrics)]
  for sp, (pa, pb) in pairs.items():
    for ro in readouts:
      cells = []
      for m in metrics:
        d = bootstrap.paired_difference(m, pa[ro], pb[ro], pa["target"], n_boot=n_boot)
        cells.append(d.format(*((1.0, 3) if m == "mse" else (100.0, 1))))
      title = f"{ev.SPLIT_TITLES.get(sp, sp)} ({len(pa['target'])})"
      lines.append(f"| {title} | {READOUT_TITLES[ro]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def render(rows: Sequence[dict[str, Any]], *, metrics: Sequence[str] = METRICS,
           readouts: Sequence[str] = ev.READOUTS) -> str:
  """The whole markdown report."""
  parts = []
  for m in metrics:
    parts += [f"## {TITLES[m]} per evaluation split", "", metric_table(rows, m, readouts), ""]
  if ev.has_few_items([(_label(r), r["summary"]) for r in rows]):
    parts += [ev.FEW_ITEMS_NOTE, ""]
  parts += ["## Rows", "", rows_table(rows)]
  return "\n".join(parts) + "\n"


CSV_FIELDS = ("run", "model", "method", "readout", "split", "n", "pearson", "spearman", "kendall",
              "mse", "invalid_frac", "checkpoint", "workdir")


def to_csv(rows: Sequence[dict[str, Any]], readouts: Sequence[str] = ev.READOUTS) -> str:
  """One line per (run, model, readout, split) with every metric; split "avg" is the average."""
  out = io.StringIO()
  w = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
  w.writeheader()
  for r in rows:
    s = r["summary"]
    parts = list(s["splits"].items()) + [("avg", {**s["avg"], "n": ""})]
    for ro in readouts:
      inv_key = "invalid_frac" if ro == "rail" else "standard_invalid_frac"
      for sp, v in parts:
        w.writerow({"run": r["run"], "model": r["name"], "method": r["method"], "readout": ro,
                    "split": sp, "n": v.get("n", ""),
                    **{m: _num(v[ro].get(m)) for m in METRICS},
                    "invalid_frac": _num(v.get(inv_key)),
                    "checkpoint": r["info"].get("checkpoint", ""), "workdir": r["workdir"]})
  return out.getvalue()


def _num(x) -> str:
  return "" if x is None or x != x else repr(float(x))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="real_jax.main run directories")
  p.add_argument("--metrics", default=",".join(METRICS),
                 help=f"comma-separated, of {', '.join(METRICS)} (default: all)")
  p.add_argument("--readouts", default="rail,standard", help="rail, standard or both")
  p.add_argument("--models", default="",
                 help="comma-separated model (row) names to keep, e.g. 'REAL,warm-up (SFT)'")
  p.add_argument("--out", default="", help="also write OUT.md and OUT.csv")
  p.add_argument("--n_boot", type=int, default=1000,
                 help="bootstrap resamples of the paired difference (two workdirs)")
  a = p.parse_args(argv)
  metrics = [m.strip() for m in a.metrics.split(",") if m.strip()]
  readouts = [r.strip() for r in a.readouts.split(",") if r.strip()]
  bad = [m for m in metrics if m not in METRICS] + [r for r in readouts if r not in ev.READOUTS]
  if bad:
    print(f"compare: unknown metric or readout {bad}; metrics: {', '.join(METRICS)}; readouts: "
          f"{', '.join(ev.READOUTS)}", file=sys.stderr)
    return 2
  try:
    rows = [r for w in a.workdirs for r in load_rows(w)]
  except CompareError as e:
    print(f"compare: {e}", file=sys.stderr)
    return 2
  name_runs(rows)
  if a.models:
    keep = {m.strip() for m in a.models.split(",")}
    rows = [r for r in rows if r["name"] in keep]
  if not rows:
    print("compare: no rows to compare (check --models against the names in results.md)",
          file=sys.stderr)
    return 2
  md = render(rows, metrics=metrics, readouts=readouts)
  runs = list(dict.fromkeys(r["run"] for r in rows))
  if len(a.workdirs) == 2 and len(runs) == 2:
    try:
      md += "\n" + paired_table(pick_row(rows, runs[0]), pick_row(rows, runs[1]),
                                metrics=metrics, readouts=readouts, n_boot=a.n_boot) + "\n"
    except CompareError as e:  # the tables stand; say why the paired section is not there
      md += f"\nNo paired difference: {e}\n"
  print(md, end="")
  if a.out:
    with open(a.out + ".md", "w") as f:
      f.write(md)
    with open(a.out + ".csv", "w") as f:
      f.write(to_csv(rows, readouts))
    print(f"wrote {a.out}.md and {a.out}.csv")
  return 0


if __name__ == "__main__":
  sys.exit(main())
