r"""A trained judge as a batched scoring server over HTTP: the reward of another RL run.

  pip install -e ".[serve]"
  python -m real_jax.serve --workdir workdirs/synthetic             # or --hf_dir exported/judge
      [--host 127.0.0.1] [--port 8000] [--max_batch 16] [--max_wait_ms 10] [--max_queue 256]

Endpoints:

  GET  /health  -> {"status": "ok", "judge": ..., "scores": "1-5", "queue": n, "max_batch": ...}
  POST /score   <- {"items": [{"prompt": ...} | {"instruction", "response", "rubric",
                                                 "reference_answer"?}, ...],
                    "seed": 0, "num_cots": 1, "greedy": false, "temperature": 1.0,
                    "top_p": 0.9, "max_new_tokens": <the server's>}
                -> {"scores": "1-5", "results": [{"index", "id", "y_hat", "score_probs",
                    "score_mass", "sampled_score", "cot", "status", "cots", "cot_y_hats",
                    "cot_sampled_scores"}, ...]}

`y_hat` is the RAIL expected score Σ_k v_k π(k | x, c) (the mean over `num_cots` CoTs), what a
GRPO policy run takes as its reward; `score_probs` maps each score to π(k); `sampled_score` is
the sampled (or, with num_cots > 1, voted) score, null if none was written. An item may carry
an `id`, echoed back.

Batching: items of concurrent requests wait in one bounded queue; a worker takes up to
`--max_batch` items with the same sampling settings (waiting at most `--max_wait_ms` after the
first) and grades them as one batch padded to the next power of two prompts (at most
`--max_batch`), so each prompt length bucket compiles a handful of shapes. An item's random draws are keyed by (the request's seed, the item's index
in its request, CoT number), as `Judge.grade` keys them, so an item gets the grade
`Judge.grade(items, seed=seed)` gives it, however the requests were batched.

Errors: malformed JSON, a missing or mistyped field, an empty `items` list, an item that is not
a judge prompt or whose prompt is longer than the judge's limit: 422 with the field or item
named (nothing of the request is graded); `max_new_tokens` above the server's: 422 (every
distinct sampling setting compiles once; the server's flags bound them). More items than the
queue holds: 413. A full queue: 503 (retry later). A batch that fails while grading is graded
again item by item: only the failing items get a 500, and the server keeps serving.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import queue
import sys
import threading
import time
from typing import Any

from absl import logging

from real_jax import judging

try:
  import fastapi
  import pydantic
  import uvicorn
except ImportError as e:  # the optional extra
  raise ImportError(f"real_jax.serve needs the serve extra ({e}): pip install -e '.[serve]'"
                    ) from None

__all__ = ["ScoreRequest", "Batcher", "make_app", "main"]


class Item(pydantic.BaseModel):
  """One record to grade: a ready judge `prompt`, or the Prometheus fields."""
  model_config = pydantic.ConfigDict(extra="forbid")
  id: str | int | None = None
  prompt: str | None = None
  instruction: str | None = None
  response: str | None = None
  rubric: str | None = None
  reference_answer: str | None = None


class ScoreRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  items: list[Item] = pydantic.Field(min_length=1)
  seed: int = pydantic.Field(0, ge=0, lt=2 ** 31)
  num_cots: int = pydantic.Field(1, ge=1, le=64)
  greedy: bool = False
  temperature: float = pydantic.Field(1.0, gt=0.0)
  top_p: float = pydantic.Field(0.9, gt=0.0, le=1.0)
  max_new_tokens: int | None = pydantic.Field(None, ge=1)


@dataclasses.dataclass
class _Job:
  ids: list[int]
  index: int
  seed: int
  settings: Any
  done: Any  # a concurrent.futures-like callback: done(result or exception)


class Batcher:
  """The bounded queue and the worker thread that grades its items in batches."""

  def __init__(self, judge: judging.Judge, *, max_batch: int, max_wait_ms: float,
               max_queue: int):
    self.judge, self.max_batch, self.max_wait = judge, int(max_batch), max_wait_ms / 1000.0
    self.max_queue = int(max_queue)
    self.queue: queue.Queue[_Job] = queue.Queue()
    self.held: list[_Job] = []  # taken from the queue, waiting for a batch of their settings
    self.pending = 0  # items queued or being graded (at most max_queue)
    self.lock = threading.Lock()
    self.batches = self.items = 0
    self._stop = threading.Event()
    self.thread = threading.Thread(target=self._run, name="real_jax.serve.batcher", daemon=True)
    self.thread.start()

  def put_all(self, jobs: list[_Job]) -> bool:
    """Enqueues a request's items, all or none (False: the queue has no room for them)."""
    with self.lock:
      if self.pending + len(jobs) > self.max_queue:
        return False
      self.pending += len(jobs)
    for j in jobs:
      self.queue.put_nowait(j)
    return True

  def rows(self, n: int) -> int:
    """The compiled batch for n items: the next power of two, at most max_batch (so a prompt
    bucket compiles at most log2(max_batch) + 2 shapes, and a lone item is not padded to 16)."""
    return min(self.max_batch, 1 << max(n - 1, 0).bit_length())

  def close(self):
    self._stop.set()
    self.thread.join(timeout=5)

  def _take(self) -> list[_Job]:
    """Up to max_batch jobs of one settings key (the oldest job's), waiting at most max_wait
    for more after the first."""
    if not self.held:
      try:
        self.held.append(self.queue.get(timeout=0.05))
      except queue.Empty:
        return []
    key = (self.held[0].seed, self.held[0].settings)
    deadline = time.monotonic() + self.max_wait
    while sum((j.seed, j.settings) == key for j in self.held) < self.max_batch:
      left = deadline - time.monotonic()
      if left <= 0:
        break
      try:
        self.held.append(self.queue.get(timeout=left))
      except queue.Empty:
        break
    batch = [j for j in self.held if (j.seed, j.settings) == key][:self.max_batch]
    taken = set(map(id, batch))
    self.held = [j for j in self.held if id(j) not in taken]
    return batch

  def _run(self):
    while not self._stop.is_set():
      batch = self._take()
      if not batch:
        continue
      grades = self._grade(batch)
      if len(batch) > 1 and isinstance(grades[0], Exception):
        # One bad item must not fail the others: grade each alone, only the bad one fails.
        grades = [self._grade([j])[0] for j in batch]
      with self.lock:
        self.pending -= len(batch)
      self.batches += 1
      self.items += len(batch)
      for j, g in zip(batch, grades):
        j.done(g)

  def _grade(self, batch: list[_Job]) -> list:
    """The grades of one batch, or its exception once per item (the server keeps serving)."""
    try:
      return self.judge.grade_ids([j.ids for j in batch], [j.index for j in batch],
                                  seed=batch[0].seed, settings=batch[0].settings,
                                  rows=self.rows(len(batch)))
    except Exception as e:  # noqa: BLE001
      logging.exception("grading a batch of %d items failed", len(batch))
      return [e] * len(batch)


def _grade_json(g: judging.Grade, index: int, item_id) -> dict[str, Any]:
  return {"index": index, "id": item_id, "y_hat": g.y_hat,
          "score_probs": {f"{v:g}": p for v, p in g.score_probs.items()},
          "score_mass": g.score_mass, "sampled_score": g.sampled_score, "cot": g.cot,
          "status": g.status, "cots": list(g.cots), "cot_y_hats": list(g.cot_y_hats),
          "cot_sampled_scores": list(g.cot_sampled_scores)}


def make_app(judge: judging.Judge, *, max_batch: int = 16, max_wait_ms: float = 10.0,
             max_queue: int = 256, max_new_tokens: int = 1024) -> fastapi.FastAPI:
  """The FastAPI app (its batcher starts with it and stops at shutdown)."""
  batcher = Batcher(judge, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    yield
    batcher.close()

  app = fastapi.FastAPI(title="real_jax judge", description=__doc__, lifespan=lifespan)
  app.state.batcher = batcher

  @app.get("/health")
  def health():
    alive = batcher.thread.is_alive()
    return {"status": "ok" if alive else "worker stopped", "judge": judge.source or "in-memory",
            "scores": judge.scale.spec,
            "output_format": judge.output_format, "queue": batcher.pending,
            "max_batch": batcher.max_batch, "batches": batcher.batches, "items": batcher.items}

  @app.post("/score")
  async def score(req: ScoreRequest):
    if not batcher.thread.is_alive():
      raise fastapi.HTTPException(503, "the grading worker has stopped; restart the server")
    if req.max_new_tokens and req.max_new_tokens > max_new_tokens:
      raise fastapi.HTTPException(422, f"max_new_tokens={req.max_new_tokens}: this server "
                                       f"samples at most {max_new_tokens} (--max_new_tokens)")
    try:
      settings = judge.settings(greedy=req.greedy, temperature=req.temperature, top_p=req.top_p,
                                max_new_tokens=req.max_new_tokens or max_new_tokens,
                                num_cots=req.num_cots, batch_size=max_batch)
    except ValueError as e:
      raise fastapi.HTTPException(422, str(e)) from None
    if len(req.items) > batcher.max_queue:
      raise fastapi.HTTPException(413, f"items: {len(req.items)} items; this server queues at "
                                       f"most {batcher.max_queue} (--max_queue): split the request")
    def render():  # tokenising is CPU work: off the event loop
      out = []
      for i, item in enumerate(req.items):
        record = {k: v for k, v in item.model_dump().items() if v is not None and k != "id"}
        out.append(judge.prompt_ids(record, f"items[{i}]"))
      return out

    try:
      ids = await asyncio.to_thread(render)
    except (TypeError, ValueError) as e:
      raise fastapi.HTTPException(422, str(e)) from None
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in ids]

    def done_cb(fut):
      return lambda result: loop.call_soon_threadsafe(
          lambda: fut.done() or (fut.set_exception(result) if isinstance(result, Exception)
                                 else fut.set_result(result)))

    jobs = [_Job(x, i, req.seed, settings, done_cb(f)) for i, (x, f) in enumerate(zip(ids,
                                                                                       futures))]
    if not batcher.put_all(jobs):
      raise fastapi.HTTPException(503, f"the queue is full ({batcher.max_queue} items); "
                                       "retry later")
    try:
      grades = await asyncio.gather(*futures)
    except Exception as e:  # noqa: BLE001
      raise fastapi.HTTPException(500, f"grading failed: {type(e).__name__}: {e}") from None
    return {"scores": judge.scale.spec,
            "results": [_grade_json(g, i, item.id) for i, (g, item) in
                        enumerate(zip(grades, req.items))]}

  return app


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a real_jax.main run (its last checkpoint)")
  src.add_argument("--hf_dir", help="a Hugging Face directory (e.g. an export_hf output)")
  p.add_argument("--best", action="store_true", help="--workdir: its best checkpoint")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max_batch", type=int, default=16, help="prompts per compiled batch")
  p.add_argument("--max_wait_ms", type=float, default=10.0,
                 help="how long the first item of a batch waits for more")
  p.add_argument("--max_queue", type=int, default=256, help="queued items before 503s")
  p.add_argument("--max_new_tokens", type=int, default=1024, help="CoT tokens (default)")
  p.add_argument("--max_prompt_len", type=int, default=0, help="0: the run's")
  a = p.parse_args(argv)
  for name in ("max_batch", "max_queue", "max_new_tokens"):
    if getattr(a, name) < 1:
      print(f"real_jax.serve: --{name}={getattr(a, name)} must be >= 1", file=sys.stderr)
      return 2
  try:
    if a.workdir:
      judge = judging.Judge.from_workdir(a.workdir, best=a.best)
    else:
      judge = judging.Judge.from_hf(a.hf_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f"real_jax.serve: {e}", file=sys.stderr)
    return 2
  if a.max_prompt_len:
    judge.max_prompt_len = int(a.max_prompt_len)
  app = make_app(judge, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
                 max_queue=a.max_queue, max_new_tokens=a.max_new_tokens)
  print(f"real_jax.serve: {judge!r} on http://{a.host}:{a.port} (POST /score, GET /health)",
        flush=True)
  uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
  return 0


if __name__ == "__main__":
  sys.exit(main())
