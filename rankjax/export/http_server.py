"""`rankjax serve`: an exported model behind a small HTTP JSON endpoint on loopback, for smoke
tests and demos (one request at a time; not a production server).

  GET  /v1/model   the model: heads, inputs (name, shape, dtype), batch limit, step, fingerprint
  POST /v1/score   {"inputs": {"dense": [[...], ...], "cat": [[...], ...]}}
                   -> {"scores": {"click": [...]}}  (one list per head, one score per row)

A request the model cannot take gets a 4xx with {"error": "..."} naming the problem: 400 for
invalid JSON, an unknown or missing input, a wrong type or shape; 413 for a batch over
--max-batch; 404 / 405 for another path or method. Inputs are the model's (ids as the data
converter wrote them, dense features before standardisation); `rankjax predict` scores raw rows.
"""

from __future__ import annotations

import http.server
import json
from typing import Any

import numpy as np

from rankjax.export.serving import ServingModel


MAX_BODY_BYTES = 256 << 20  # A JSON body larger than this is refused (413) unread.


class RequestError(ValueError):
  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def score_request(model: ServingModel, body: bytes, max_batch: int) -> dict[str, Any]:
  """The response to a /v1/score body; RequestError (status, message) for a bad request."""
  try:
    request = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise RequestError(400, f"the body is not JSON: {e}") from None
  if not isinstance(request, dict) or not isinstance(request.get("inputs"), dict):
    raise RequestError(400, 'the body must be a JSON object {"inputs": {NAME: rows, ...}}')
  extra = sorted(set(request) - {"inputs"})
  if extra:
    raise RequestError(400, f"unknown field {extra[0]!r} (a request holds only 'inputs')")
  inputs = request["inputs"]
  for name, rows in inputs.items():
    if not isinstance(rows, list):
      raise RequestError(400, f"input {name!r}: a list of rows expected, got {type(rows).__name__}")
    if len(rows) > max_batch:
      raise RequestError(413, f"input {name!r}: {len(rows)} rows, over the limit of {max_batch} per request")
  try:
    arrays = model.check(inputs)
  except ValueError as e:
    raise RequestError(400, str(e)) from None
  try:
    scores = model.score(arrays)
  except Exception as e:  # The client gets a reply whatever failed; the server keeps serving.
    raise RequestError(500, f"scoring failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
  return {"scores": {h: np.asarray(v).tolist() for h, v in scores.items()}}


def model_description(model: ServingModel, max_batch: int) -> dict[str, Any]:
  m = model.manifest
  return {"model": m["model"], "task": m["task"], "heads": m["heads"], "score": m["score"], "inputs": m["inputs"],
          "max_batch": max_batch, "step": m["step"], "workdir": m["workdir"], "quantize": m["quantize"]}


def make_server(model: ServingModel, host: str = "127.0.0.1", port: int = 8500,
                max_batch: int = 4096) -> http.server.HTTPServer:
  """The server (not yet serving); port 0 picks a free port (server.server_address has it)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 30  # Seconds a client may stall a read: one request at a time, so none may hold the server.
    def _send(self, status: int, payload: dict) -> None:
      data = json.dumps(payload).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's naming)
      if self.path == "/v1/model":
        self._send(200, model_description(model, max_batch))
      elif self.path == "/v1/score":
        self._send(405, {"error": "POST a JSON body to /v1/score"})
      else:
        self._send(404, {"error": f"no endpoint {self.path} (GET /v1/model, POST /v1/score)"})

    def do_POST(self):  # noqa: N802
      if self.path != "/v1/score":
        self._send(404 if self.path != "/v1/model" else 405,
                   {"error": f"no POST endpoint {self.path} (POST /v1/score)"})
        return
      try:
        length = int(self.headers.get("Content-Length", "0"))
      except ValueError:
        length = -1
      if length < 0:
        self._send(400, {"error": "a Content-Length header is required"})
        return
      if length > MAX_BODY_BYTES:
        self._send(413, {"error": f"a body of {length:,} bytes is over the limit of {MAX_BODY_BYTES:,}"})
        return
      try:
        self._send(200, score_request(model, self.rfile.read(length), max_batch))
      except RequestError as e:
        self._send(e.status, {"error": str(e)})

  return http.server.HTTPServer((host, port), Handler)
