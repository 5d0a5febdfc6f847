"""`rankjax serve --model DIR [--port P]`: an exported model behind a loopback HTTP JSON endpoint
(rankjax/export/http_server.py) for smoke tests and demos; Ctrl-C stops it."""

from __future__ import annotations

import argparse
import sys

from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="rankjax serve", description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="an artifact directory written by `rankjax export`")
  parser.add_argument("--port", type=int, default=8500, help="TCP port (0 = any free port)")
  parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
  parser.add_argument("--max-batch", type=int, default=4096, help="rows per request at most (413 above)")
  args = parser.parse_args(argv)
  from rankjax.export.http_server import make_server
  from rankjax.export.serving import ServingModel
  try:
    model = ServingModel(args.model)
    server = make_server(model, args.host, args.port, args.max_batch)
  except (ValueError, OSError) as e:
    return fail(" ".join(str(e).split()), EXIT_CONFIG_ERROR)
  host, port = server.server_address[:2]
  print(f"rankjax serve: {model.manifest['model']} (step {model.manifest['step']}) on http://{host}:{port} "
        "(GET /v1/model, POST /v1/score)", file=sys.stderr, flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  return 0
