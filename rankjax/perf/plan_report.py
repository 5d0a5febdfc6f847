"""The report of `rankjax plan`: the embedding plan of a config, per table and per device, with the compiled
train step's memory analysis when the step compiles for the target devices."""

from __future__ import annotations

import json

import jax
import ml_collections

from rankjax.config import task_class, validate
from rankjax.embedding import planner
from rankjax.embedding.builder import configured_tables
from rankjax.experiment import compile_abstract, data_shape
from rankjax.tasks.ctr import column_aliases


def compiled_memory(config: ml_collections.ConfigDict, shape: dict) -> dict | None:
  """memory_analysis() of the compiled train step on the visible devices, from abstract inputs."""
  analysis = compile_abstract(config, shape, jax.devices())[2].memory_analysis()
  if analysis is None:
    return None
  return {k: int(getattr(analysis, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "generated_code")}


def print_plan(config: ml_collections.ConfigDict, devices: int | None, device_memory: int | None
               ) -> planner.Plan | None:
  """Prints the plan (None when the task has no tables) and the compiled step's memory."""
  num_devices = devices or jax.device_count()
  validate(config, num_devices)
  shape = data_shape(config)
  tables = task_class(config.task.name).embedding_tables(config, shape)
  tables = configured_tables(config, tables, num_devices, column_aliases(shape))
  if not tables:
    print(f"task {config.task.name!r} with model {config.model.name!r} has no embedding tables: "
          "dense parameters only, replicated on every device")
    result = None
  else:
    result = _print_tables(config, tables, num_devices, device_memory)
  if jax.device_count() == num_devices:
    memory = compiled_memory(config, shape)
    if memory:
      print("compiled train step, per device: " + json.dumps(memory))
  return result


def _print_tables(config: ml_collections.ConfigDict, tables: list, num_devices: int,
                  device_memory: int | None) -> planner.Plan:
  result = planner.plan(tables, num_devices, optimizer=config.embedding.optimizer, device_memory=device_memory)
  print(f"{'table':<14}{'rows':>12}{'dim':>5}  {'sharding':<15}{'bytes total':>16}{'max bytes/device':>18}")
  for t, p in zip(tables, result.tables):
    print(f"{t.name:<14}{t.vocab_size:>12,}{t.dim:>5}  {p.sharding:<15}{p.bytes_total:>16,}{max(p.bytes_per_device):>18,}")
  print(f"\nper device (embedding params + optimizer state), {num_devices} devices:")
  for d, b in enumerate(result.device_bytes):
    print(f"  device {d:>3}: {int(b):>16,} B")
  print(f"imbalance (max/mean): {result.imbalance:.3f}")
  return result
