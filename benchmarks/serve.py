r"""The scoring server's throughput against grading in-process, side by side in one process.

  python benchmarks/serve.py                          # the committed synthetic base, this CPU
  python benchmarks/serve.py --hf_dir exported/judge --items 128 --new_tokens 256

The judge (`--hf_dir`, default the committed synthetic base) grades the same `--items` records
(synthetic test items in the Prometheus prompt, one CoT of at most `--new_tokens` tokens each,
T = 1, top-p 0.9, seed 0) four ways, each after an untimed warm-up pass (and, for the server,
every power-of-two batch it may use compiled first):

  * `Judge.grade`, one call per item (a reward function that calls the judge per sample);
  * `Judge.grade`, one call for all items in batches of `--max_batch` (in-process, batched);
  * `python -m real_jax.serve`'s app on a localhost port (uvicorn, as the CLI runs it): one
    client sending one item per request, one request after another;
  * the same server with `--clients` concurrent clients, one item per request (the server
    batches them, up to `--max_batch` per batch, `--max_wait_ms`).

It prints items/s of each and the ratio against one `Judge.grade` call per item.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvicorn  # noqa: E402

from real_jax import judging, serve  # noqa: E402
from real_jax.data import synthetic  # noqa: E402

BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                    "synthetic_base")


def _post(port: int, body: dict) -> dict:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
  conn.request("POST", "/score", body=json.dumps(body),
               headers={"Content-Type": "application/json"})
  r = conn.getresponse()
  out = json.loads(r.read())
  conn.close()
  if r.status != 200:
    raise RuntimeError(f"HTTP {r.status}: {out}")
  return out


def _timed(fn) -> float:
  fn()  # compiles every shape the timed pass uses
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--hf_dir", default=BASE)
  p.add_argument("--items", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=56)
  p.add_argument("--max_batch", type=int, default=16)
  p.add_argument("--max_wait_ms", type=float, default=10.0)
  p.add_argument("--clients", type=int, default=16)
  a = p.parse_args(argv)
  load0 = os.getloadavg()[0]  # before this script's own work

  judge = judging.Judge.from_hf(a.hf_dir)
  judge.max_prompt_len = 128 if a.hf_dir == BASE else judge.max_prompt_len
  rows = synthetic.generate_all(synthetic.SyntheticConfig(
      difficulty=0, shuffle_items=True, train_size=8, test_size=a.items, ood_size=8))["test"]
  records = [{"prompt": judge.prompt_text(r)} for r in rows[:a.items]]
  kw = dict(max_new_tokens=a.new_tokens, seed=0)

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  app = serve.make_app(judge, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
                       max_queue=max(256, a.items), max_new_tokens=a.new_tokens)
  srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  threading.Thread(target=srv.run, daemon=True).start()
  while not srv.started:
    time.sleep(0.05)

  def per_item():
    for r in records:
      judge.grade([r], **kw)

  def batched():
    judge.grade(records, batch_size=a.max_batch, **kw)

  def one_client():
    for r in records:
      _post(port, {"items": [r], "seed": 0})

  def many_clients():
    with concurrent.futures.ThreadPoolExecutor(a.clients) as pool:
      list(pool.map(lambda r: _post(port, {"items": [r], "seed": 0}), records))

  # Every batch shape the server may use (power-of-two rows up to max_batch), compiled before
  # any timing: how concurrent requests happen to batch must not put a compile in a timed pass.
  settings = judge.settings(max_new_tokens=a.new_tokens, batch_size=a.max_batch)
  first = judge.prompt_ids(records[0])
  rows = 1
  while rows <= a.max_batch:
    judge.grade_ids([first], [0], seed=0, settings=settings, rows=rows)
    rows *= 2
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; judge "
        f"{judge.source}; {a.items} items, CoTs <= {a.new_tokens} tokens; max_batch "
        f"{a.max_batch}, max_wait {a.max_wait_ms} ms; 1-min load {load0:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} after compiling")
  results = []
  for name, fn in (("Judge.grade, one call per item", per_item),
                   (f"Judge.grade, batches of {a.max_batch}", batched),
                   ("server, 1 client", one_client),
                   (f"server, {a.clients} concurrent clients", many_clients)):
    t = _timed(fn)
    results.append((name, a.items / t))
  ref = results[0][1]
  print(f"{'':44s} {'items/s':>9s}  vs one call per item")
  for name, rate in results:
    print(f"{name:44s} {rate:9.2f}  {rate / ref:5.2f}x")
  print(f"# server batches: {app.state.batcher.batches} for {app.state.batcher.items} items; "
        f"load {os.getloadavg()[0]:.2f} at the end")
  srv.should_exit = True
  return 0


if __name__ == "__main__":
  sys.exit(main())
