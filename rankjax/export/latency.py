"""`rankjax bench serve`: latency and throughput of an exported model per request batch size.

Each call is timed end to end as a server sees it: the request's NumPy arrays checked, padded,
copied to the device, scored, and the scores copied back. Inputs are random valid rows (ids
uniform within each slot's vocabulary, dense features standard normal, full lists).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from rankjax.export.serving import ServingModel

BATCH_SIZES = (1, 16, 256, 4096)


@dataclasses.dataclass
class Latency:
  batch_size: int
  calls: int
  p50_ms: float
  p99_ms: float
  mean_ms: float

  @property
  def rows_per_sec(self) -> float:
    return self.batch_size / (self.mean_ms / 1e3)


def random_inputs(model: ServingModel, batch_size: int, id_bounds: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
  """A valid request of `batch_size` rows (lists of the training list size for ranking)."""
  out = {}
  for name, spec in model.inputs.items():
    shape = [batch_size] + [d if isinstance(d, int) else model.manifest["features"].get("max_list_size", 1)
                            for d in spec["shape"][1:]]
    if name in id_bounds:
      out[name] = (rng.random(shape) * id_bounds[name]).astype(spec["dtype"])
    elif name == "mask":
      out[name] = np.ones(shape, spec["dtype"])
    else:
      out[name] = rng.standard_normal(shape).astype(spec["dtype"])
  return out


def measure(model: ServingModel, id_bounds: dict[str, np.ndarray], batch_sizes=BATCH_SIZES, seconds: float = 2.0,
            min_calls: int = 20, seed: int = 0) -> list[Latency]:
  """Per batch size: compile and warm up, then time calls for about `seconds` (at least `min_calls`)."""
  rng = np.random.default_rng(seed)
  results = []
  for batch_size in batch_sizes:
    requests = [random_inputs(model, batch_size, id_bounds, rng) for _ in range(4)]
    for request in requests:  # Compile and warm up.
      model.score(request)
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
      request = requests[len(times) % len(requests)]
      t0 = time.perf_counter()
      model.score(request)
      times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    results.append(Latency(batch_size, len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                           float(ms.mean())))
  return results


def format_table(results: list[Latency], device: str) -> str:
  lines = [f"serving latency on {device} (one call: check, pad, host->device, score, device->host)",
           f"{'batch':>6} {'calls':>6} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>12}"]
  lines += [f"{r.batch_size:>6} {r.calls:>6} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} {r.rows_per_sec:>12,.0f}" for r in results]
  return "\n".join(lines)
