"""`rankjax bench embedding`: step time of the sparse engine vs tables-as-optax-params, by table size.

The model is deliberately thin (a logit = sum of per-feature dot products with a dense weight)
so the step time is the embedding engine's: lookup, pooling, the row gradient and the update.
The sparse engine's step should stay flat as tables grow; the naive baseline, whose optimizer
touches every row every step, grows with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rankjax.perf import hlo_stats
from rankjax.embedding.sharding import row_wise
from rankjax.embedding.tables import EmbeddingTableConfig, FeatureSlots
from rankjax.embedding.engine import EmbeddingEngine, ShardingType
from rankjax import partitioner
from rankjax.partitioner import HOST_AXIS, make_mesh

NUM_TABLES, DIM = 26, 16


def _available_bytes() -> int:
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _batches(rows: int, batch: int, steps: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    ids = (rng.zipf(1.2, size=(batch, NUM_TABLES)) - 1) % rows
    labels = (rng.random(batch) < 0.25).astype(np.float32)
    yield ids.astype(np.int32), labels


def _time_steps(step: Callable, state, batches, placer, warmup: int) -> tuple[list[float], object]:
  times = []
  for i, (ids, labels) in enumerate(batches):
    ids, labels = placer(ids), placer(labels)
    start = time.perf_counter()
    state = step(state, ids, labels, jnp.int32(i + 1))
    jax.block_until_ready(state)
    if i >= warmup:
      times.append((time.perf_counter() - start) * 1e3)
  return times, state


def _logit(w_fd, emb_bfd):
  return jnp.sum(emb_bfd * w_fd, axis=(1, 2))


def sparse_engine(rows: int, sharding: str, optimizer: str, devices, exchange_capacity: float = 1.25,
                  hosts: int = 1, host_exchange_capacity: float = 1.25):
  """(engine, jitted step, initial state, batch sharding) for 26 tables of `rows` rows; `hosts` > 1:
  a mesh ("host", "data") of that many hosts (table_row_wise keeps each table on one)."""
  axes = (HOST_AXIS, "data") if hosts > 1 else ("data", "model")
  if len(devices) % hosts:
    raise ValueError(f"--hosts {hosts} does not divide {len(devices)} devices")
  mesh = make_mesh(axes, (hosts, len(devices) // hosts) if hosts > 1 else (len(devices), 1), devices)
  tables = [EmbeddingTableConfig(f"t{i}", rows, DIM, (f"f{i}",), sharding=sharding) for i in range(NUM_TABLES)]
  engine = EmbeddingEngine(tables, FeatureSlots(tuple(f"f{i}" for i in range(NUM_TABLES)), (1,) * NUM_TABLES),
                           mesh, batch_axes=axes, shard_axes=axes,
                           default_optimizer=optimizer, optimizer_args={optimizer: {"learning_rate": 0.05}},
                           exchange_capacity=exchange_capacity, host_exchange_capacity=host_exchange_capacity)
  shardings = engine.shardings()
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def init(key):
    return engine.init(key), jnp.full((NUM_TABLES, DIM), 0.1, jnp.float32)

  def step(state, ids, labels, step):
    tables, w = state
    rows_btd = engine.lookup(tables, ids)

    def loss_fn(w, rows_btd):
      return jnp.mean(optax.sigmoid_binary_cross_entropy(_logit(w, engine.pool(rows_btd, ids)), labels))

    g_w, g_rows = jax.grad(loss_fn, argnums=(0, 1))(w, rows_btd)
    return engine.apply_gradients(tables, ids, g_rows, step), w - 0.01 * g_w

  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(engine.batch_axes or None))
  jitted = partitioner.jit(step, in_shardings=((shardings, rep), batch, batch, rep), out_shardings=(shardings, rep),
                           donate_argnums=0)
  state = partitioner.jit(init, out_shardings=(shardings, rep))(jax.random.key(0))
  return engine, jitted, state, batch


def naive(rows: int):
  """Tables as ordinary optax params: Adagrad over the whole [26, rows, 16] array every step."""
  tx = optax.adagrad(0.05)
  offsets = jnp.arange(NUM_TABLES, dtype=jnp.int32) * rows

  def init(key):
    params = {"tables": jax.random.uniform(key, (NUM_TABLES * rows, DIM), jnp.float32, -0.01, 0.01),
              "w": jnp.full((NUM_TABLES, DIM), 0.1, jnp.float32)}
    return params, tx.init(params)

  def step(state, ids, labels, step):
    params, opt_state = state

    def loss_fn(params):
      emb = params["tables"][ids + offsets]
      return jnp.mean(optax.sigmoid_binary_cross_entropy(_logit(params["w"], emb), labels))

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return partitioner.jit(step, donate_argnums=0), partitioner.jit(init)(jax.random.key(0))


def run(rows_list: list[int], steps: int, warmup: int, batch: int, sharding: str, optimizer: str,
        naive_enabled: bool, emit: Callable[[dict], None], exchange_capacity: float = 1.25) -> dict:
  devices = jax.devices()
  placer = lambda x: jnp.asarray(x)
  medians = {}
  for rows in rows_list:
    engine, step, state, batch_sharding = sparse_engine(rows, sharding, optimizer, devices, exchange_capacity)
    times, state = _time_steps(step, state, _batches(rows, batch, steps + warmup), lambda x: jax.device_put(x, batch_sharding), warmup)
    medians[rows] = statistics.median(times)
    emit({"engine": "sparse", "sharding": sharding, "optimizer": optimizer, "rows_per_table": rows,
          "batch": batch, "devices": len(devices), "step_ms_median": round(medians[rows], 3),
          "step_ms_min": round(min(times), 3), "steps": len(times)})
    del state, step, engine
    if not naive_enabled:
      continue
    need = 5 * NUM_TABLES * rows * DIM * 4  # table, gradient, accumulator, update, new table.
    if need > 0.8 * _available_bytes():
      emit({"engine": "naive_optax", "sharding": "none", "rows_per_table": rows, "skipped": True,
            "reason": f"needs ~{need / 2**30:.1f} GiB, {_available_bytes() / 2**30:.1f} GiB available"})
      continue
    nstep, nstate = naive(rows)
    times, nstate = _time_steps(nstep, nstate, _batches(rows, batch, steps + warmup), placer, warmup)
    emit({"engine": "naive_optax", "sharding": "none", "optimizer": "adagrad (optax, whole table)",
          "rows_per_table": rows, "batch": batch, "devices": len(devices),
          "step_ms_median": round(statistics.median(times), 3), "step_ms_min": round(min(times), 3),
          "steps": len(times)})
    del nstate, nstep
  summary = {"summary": True, "sparse_ratio_largest_over_smallest": round(medians[max(medians)] / medians[min(medians)], 4),
             "rows": sorted(medians)}
  emit(summary)
  return summary


def collectives(rows: int, batch: int, optimizer: str, exchange_capacity: float, emit: Callable[[dict], None],
                fallback_steps: int = 50, shardings: tuple[ShardingType, ...] = tuple(ShardingType),
                hosts: int = 1, host_exchange_capacity: float = 1.25) -> None:
  """Per sharding type: the collectives of the compiled engine step and the bytes they move.

  row_wise's step holds two paths under one conditional: the capacity-bound all-to-all and the
  all-gather fallback (ops under row_wise.FALLBACK_SCOPE). Its row gives the bytes of the path
  taken, the fallback's separately, and how many of `fallback_steps` of the bench's data fell back.
  With hosts > 1 it gives the part of the taken path's bytes that comes from other hosts too.
  """
  for sharding in shardings:
    engine, step, state, batch_sharding = sparse_engine(rows, sharding.value, optimizer, jax.devices(),
                                                        exchange_capacity, hosts, host_exchange_capacity)
    ids, labels = next(_batches(rows, batch, 1))
    compiled = step.lower(state, jax.device_put(ids, batch_sharding), jax.device_put(labels, batch_sharding),
                          jnp.int32(1)).compile()
    ops = hlo_stats.collectives(compiled.as_text())
    fallback = [o for o in ops if row_wise.FALLBACK_SCOPE in o.op_name]
    taken = [o for o in ops if row_wise.FALLBACK_SCOPE not in o.op_name]
    row = {"sharding": sharding.value, "devices": jax.device_count(), "hosts": hosts, "rows_per_table": rows, "batch": batch,
           "collectives": hlo_stats.summarize(taken), "collective_bytes_per_step": sum(o.bytes for o in taken)}
    if hosts > 1:  # Partition ids run over the mesh's devices in order; the host is the first axis.
      host_of = np.indices(engine.mesh.devices.shape)[engine.mesh.axis_names.index(HOST_AXIS)].reshape(-1)
      row |= {"host_exchange_capacity": host_exchange_capacity,
              "cross_host_bytes_per_step": round(sum(hlo_stats.cross_host_bytes(o, host_of) for o in taken))}
    if fallback:
      flag = partitioner.jit(lambda ids: engine.exchange_fallback(engine.route(ids)))
      fell_back = sum(float(flag(jax.device_put(i, batch_sharding))) > 0
                      for i, _ in _batches(rows, batch, fallback_steps, seed=1))
      row |= {"exchange_capacity": exchange_capacity, "fallback_collectives": hlo_stats.summarize(fallback),
              "fallback_bytes_per_step": sum(o.bytes for o in fallback),
              "fallback_steps": f"{fell_back} of {fallback_steps}"}
    emit(row)


def _positive_ints(text: str) -> list[int]:
  """argparse type: "1000,3000" -> [1000, 3000]; anything else is a usage error (exit 2)."""
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
  if any(v < 1 for v in values):
    raise argparse.ArgumentTypeError(f"{text!r}: rows must be >= 1")
  return values


def _positive_float(text: str) -> float:
  """argparse type: a number > 0 (a capacity); anything else is a usage error (exit 2)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not value > 0:  # Also rejects NaN.
    raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
  return value


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="rankjax bench embedding", description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default="100000,1000000,4000000", type=_positive_ints,
                      help="rows per table, comma-separated")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per size")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--sharding", default="row_wise", choices=[s.value for s in ShardingType])
  parser.add_argument("--optimizer", default="row_wise_adagrad")
  parser.add_argument("--no-naive", action="store_true", help="skip the tables-as-optax-params baseline")
  parser.add_argument("--exchange-capacity", type=_positive_float, default=1.25,
                      help="row_wise all-to-all room per owner (embedding.exchange_capacity)")
  parser.add_argument("--collectives", action="store_true",
                      help="instead of timing, print each sharding type's collectives from the compiled HLO")
  parser.add_argument("--hosts", type=int, default=1,
                      help="--collectives: a mesh (host, data) of this many hosts (default: one host)")
  parser.add_argument("--host-exchange-capacity", type=_positive_float, default=1.25,
                      help="--collectives with --hosts: table_row_wise's room across hosts "
                           "(embedding.host_exchange_capacity)")
  args = parser.parse_args(argv)
  emit = lambda obj: print(json.dumps(obj), flush=True)
  rows_list = args.rows
  if args.collectives:
    collectives(rows_list[0], args.batch, args.optimizer, args.exchange_capacity, emit, hosts=args.hosts,
                host_exchange_capacity=args.host_exchange_capacity)
    return 0
  run(rows_list, args.steps, args.warmup, args.batch, args.sharding, args.optimizer, not args.no_naive, emit,
      args.exchange_capacity)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
