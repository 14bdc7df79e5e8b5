"""The scoring server (real_jax.serve): a real uvicorn server on a free localhost port, real
HTTP requests; results equal Judge.grade however the requests were batched."""
import concurrent.futures
import http.client
import json
import socket
import threading
import time

import pytest
import uvicorn

import real_jax
from real_jax import serve
from run_helpers import tiny_random_model
from test_judge import _byte_level

pytestmark = pytest.mark.usefixtures("fast_compiles_module")

MAX_BATCH, NEW_TOKENS = 4, 6
ITEMS = [{"prompt": f"Is 2+2={r}? Score it.", "id": f"q{i}"}
         for i, r in enumerate(("4", "5", "four", "22", "3", "2+2"))]


@pytest.fixture(scope="module")
def judge():
  graphdef, params, mesh = tiny_random_model(seed=7)
  return real_jax.Judge(graphdef, params, _byte_level(True), mesh=mesh, max_prompt_len=64)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(judge):
  port = _free_port()
  app = serve.make_app(judge, max_batch=MAX_BATCH, max_wait_ms=50, max_queue=16,
                       max_new_tokens=NEW_TOKENS)
  srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  t = threading.Thread(target=srv.run, daemon=True)
  t.start()
  for _ in range(200):
    if srv.started:
      break
    time.sleep(0.05)
  assert srv.started
  yield port, app
  srv.should_exit = True
  t.join(timeout=10)


def _post(port, body, path="/score", raw=None):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
  conn.request("POST", path, body=raw if raw is not None else json.dumps(body),
               headers={"Content-Type": "application/json"})
  r = conn.getresponse()
  data = json.loads(r.read() or b"null")
  conn.close()
  return r.status, data


def _same(result, grade):
  assert result["cot"] == grade.cot and result["status"] == grade.status
  assert result["y_hat"] == pytest.approx(grade.y_hat, abs=1e-5)
  assert result["sampled_score"] == grade.sampled_score
  assert result["score_probs"].keys() == {f"{v:g}" for v in grade.score_probs}


def test_results_equal_judge_grade_however_batched(judge, server):
  port, app = server
  records = [{"prompt": it["prompt"]} for it in ITEMS]
  want = judge.grade(records, seed=3, max_new_tokens=NEW_TOKENS, batch_size=MAX_BATCH)
  status, out = _post(port, {"items": ITEMS, "seed": 3})  # one request: batches of 4 and 2
  assert status == 200 and out["scores"] == "1-5"
  assert [r["id"] for r in out["results"]] == [it["id"] for it in ITEMS]
  for r, g in zip(out["results"], want):
    _same(r, g)
  # Each item alone, all at once: batched together by the server, each keyed as index 0.
  batches, items = app.state.batcher.batches, app.state.batcher.items
  with concurrent.futures.ThreadPoolExecutor(len(ITEMS)) as pool:
    alone = list(pool.map(lambda it: _post(port, {"items": [it], "seed": 3}), ITEMS))
  assert app.state.batcher.items - items == len(ITEMS)
  assert app.state.batcher.batches - batches < len(ITEMS)  # some requests shared a batch
  for (status, out), rec in zip(alone, records):
    assert status == 200
    _same(out["results"][0], judge.grade([rec], seed=3, max_new_tokens=NEW_TOKENS)[0])
  # Several CoTs per item: the mean and the vote, as Judge.grade(num_cots=2).
  status, out = _post(port, {"items": ITEMS[:2], "seed": 1, "num_cots": 2})
  want = judge.grade(records[:2], seed=1, max_new_tokens=NEW_TOKENS, num_cots=2)
  assert status == 200
  for r, g in zip(out["results"], want):
    _same(r, g)
    assert r["cots"] == list(g.cots)


def test_sixteen_concurrent_clients_all_get_answers(server):
  port, _ = server
  def client(i):
    return _post(port, {"items": [ITEMS[i % len(ITEMS)]], "seed": i % 2})
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    got = list(pool.map(client, range(16)))
  assert [s for s, _ in got] == [200] * 16
  for i, (_, out) in enumerate(got):
    r = out["results"][0]
    assert r["id"] == ITEMS[i % len(ITEMS)]["id"] and 0.0 <= r["y_hat"] <= 5.0


def test_bad_requests_get_4xx_and_the_server_keeps_serving(judge, server):
  port, app = server
  status, out = _post(port, None, raw="{not json")
  assert status == 422 and "json" in json.dumps(out).lower()
  status, out = _post(port, {"seed": 0})
  assert status == 422 and "items" in json.dumps(out)
  status, out = _post(port, {"items": []})
  assert status == 422 and "items" in json.dumps(out)
  status, out = _post(port, {"items": [{"prompt": "x " * 200}]})
  assert status == 422 and "items[0]" in out["detail"] and "max_prompt_len" in out["detail"]
  status, out = _post(port, {"items": [{"response": "4"}]})
  assert status == 422 and "items[0]" in out["detail"]
  status, out = _post(port, {"items": [ITEMS[0]], "num_cots": 0})
  assert status == 422 and "num_cots" in json.dumps(out)
  status, out = _post(port, {"items": [ITEMS[0]], "max_new_tokens": NEW_TOKENS + 1})
  assert status == 422 and "max_new_tokens" in out["detail"]
  status, out = _post(port, {"items": [ITEMS[0]], "seed": -1})
  assert status == 422 and "seed" in json.dumps(out)
  status, out = _post(port, {"items": ITEMS * 3})  # 18 items, a queue of 16
  assert status == 413 and "max_queue" in out["detail"]
  batcher = app.state.batcher
  with batcher.lock:
    batcher.pending += batcher.max_queue  # as if the queue were full
  try:
    status, out = _post(port, {"items": [ITEMS[0]]})
  finally:
    with batcher.lock:
      batcher.pending -= batcher.max_queue
  assert status == 503 and "queue is full" in out["detail"]
  # A batch that fails while grading: its items get a 500, the next request is served.
  real = judge.grade_ids
  judge.grade_ids = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
  try:
    status, out = _post(port, {"items": [ITEMS[0]]})
  finally:
    judge.grade_ids = real
  assert status == 500 and "boom" in out["detail"]
  status, out = _post(port, {"items": [ITEMS[0]]})
  assert status == 200
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  conn.request("GET", "/health")
  r = conn.getresponse()
  health = json.loads(r.read())
  assert r.status == 200 and health["status"] == "ok" and health["queue"] == 0
