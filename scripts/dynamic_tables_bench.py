"""What a dynamic table's map costs, on the default backend (BENCHMARKS.md, "Dynamic tables ...").

  python scripts/dynamic_tables_bench.py [--ids 2048] [--capacities 169,100000] [--map-shards 1,8]
      [--steps 20] [--modes hashed,dynamic,dynamic_pieces8] [--devices 8] [--skip-map-update]

1. One table's map update (`dynamic.admit`, jitted; with --map-shards L > 1 the map in L pieces on
   one device, as the engine updates it) for a batch of Zipf ids, per capacity, with 31-bit ids
   and with 64-bit ids (a wide map): a fresh batch every step (new ids arrive) and the same batch
   again (nothing new).
2. The default config's train step with its nine largest features hashed into a tenth of their
   rows, or dynamic tables of the same memory (and with admit_after=4), alternated in one process.
One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.config import load_config_file
from rankjax.embedding import dynamic, dynamic_shards
from rankjax.perf.bench import bench


def _median_ms(fn, steps: int) -> float:
  times = []
  for i in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def _admit_fn(spec: dynamic.DynamicSpec):
  """One map update as the engine runs it on one device: (state, ids, high words, step) -> (state,
  the ids' rows)."""
  if spec.shards == 1:
    return jax.jit(lambda state, ids, hi, step: dynamic.admit(spec, state, ids, step, hi)[:2])

  def admit(pieces, ids, hi, step):  # The map in pieces: rankjax/embedding/engine.py's _admit_pieces.
    words = dynamic.key_words(ids.reshape(-1), None if hi is None else hi.reshape(-1))
    u, counts = dynamic.distinct(words)
    pieces, rows = dynamic_shards.admit(spec, pieces, jnp.int32(0), u, counts, step)[:2]
    return pieces, dynamic.at_ids(u, rows, words)

  return jax.jit(admit)


def map_update(num_ids: int, capacities: list[int], steps: int, shards: list[int]) -> None:
  rng = np.random.default_rng(0)
  draws = [rng.zipf(1.2, (num_ids, 1)) % (20 * max(capacities)) for _ in range(steps + 3)]
  narrow = [(jnp.asarray(d.astype(np.int32)), None) for d in draws]
  # 64-bit ids: the same draws with a high word spread over all 32 bits (as raw ids come).
  wide = [(jnp.asarray(d.astype(np.int32)), jnp.asarray((d * 0x9E3779B1 % 2**32).astype(np.uint32).view(np.int32)))
          for d in draws]
  for capacity, pieces, (ids_kind, batches) in itertools.product(capacities, shards, (("31-bit", narrow),
                                                                                    ("64-bit", wide))):
    spec = dynamic.DynamicSpec(capacity=capacity // pieces * pieces, wide=ids_kind == "64-bit", shards=pieces)
    admit = _admit_fn(spec)
    key = jax.random.key_data(jax.random.key(0))
    box = [dynamic.init_map(spec, key) if pieces == 1 else dynamic_shards.init(spec, key)]

    def step(i, fresh, batches=batches, admit=admit, box=box):
      out = admit(box[0], *batches[i % len(batches) if fresh else 0], jnp.int32(i + 1))
      box[0] = out[0]
      return out

    for i in range(3):
      step(i, True)
    fresh = _median_ms(lambda i: step(i + 3, True), steps)
    same = _median_ms(lambda i: step(i, False), steps)
    print(json.dumps({"part": "map_update", "device": jax.devices()[0].device_kind, "ids": num_ids,
                      "id_bits": ids_kind, "capacity": spec.capacity, "map_shards": pieces,
                      "new_ids_every_step_ms": round(fresh, 3), "same_batch_ms": round(same, 3)}), flush=True)


def config(mode: str):
  c = load_config_file("configs/default.py")
  big = [i for i, v in enumerate(c.data.synthetic.vocab_sizes) if v >= 1500]
  overrides = []
  for i in big:
    rows = c.data.synthetic.vocab_sizes[i] // 10
    if mode == "hashed":
      overrides.append(f"cat_{i}:rows={rows}")
    else:  # The same memory: 68 B a dim-16 row with row-wise Adagrad, 84 with its (31-bit) map entry.
      pieces = int(mode.removeprefix("dynamic_pieces")) if mode.startswith("dynamic_pieces") else 1
      capacity = (int(rows * 68 / 84) - 1) // pieces * pieces
      overrides += [f"cat_{i}:kind=dynamic", f"cat_{i}:capacity={capacity}"]
      if mode == "dynamic_admit4":
        overrides.append(f"cat_{i}:admit_after=4")
      if pieces > 1:  # The map split by id (rankjax/embedding/dynamic_shards.py).
        overrides.append(f"cat_{i}:map_shards={pieces}")
  c.embedding.overrides = tuple(overrides)
  c.data.synthetic.num_train, c.data.synthetic.num_eval = 65536, 8192
  return c


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ids", type=int, default=2048)
  parser.add_argument("--capacities", default="169,100000")
  parser.add_argument("--map-shards", default="1", help="map update: pieces of the map (map_shards), comma-separated")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--modes", default="hashed,dynamic,dynamic_admit4",
                      help="train-step variants: hashed, dynamic, dynamic_admit4, dynamic_piecesL (map_shards=L)")
  parser.add_argument("--devices", type=int, default=1, help="devices of the train step's mesh (data parallel)")
  parser.add_argument("--skip-map-update", action="store_true")
  args = parser.parse_args(argv)
  if not args.skip_map_update:
    map_update(args.ids, [int(c) for c in args.capacities.split(",")], args.steps,
               [int(s) for s in args.map_shards.split(",")])
  work = pathlib.Path(tempfile.mkdtemp())
  for rep in range(args.reps):
    for mode in args.modes.split(","):
      c = config(mode)
      c.mesh.shape = (args.devices, 1)
      r = bench(c, work / f"{mode}-{rep}", args.steps, 3, jax.devices()[:args.devices])
      print(json.dumps({"part": "train_step", "rep": rep, "mode": mode, "device": r["device_kind"],
                        "step_ms": round(r["step_ms_median"], 3), "samples_per_s": round(r["samples_per_sec"])}),
            flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
