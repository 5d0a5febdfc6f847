"""A train step's predicted time on a device kind, from its compiled program alone (no step runs).

  step time = matrix-product FLOPs / peak FLOP/s            (compute)
            + bytes accessed without whole-table passes / peak bytes/s   (memory)
            + collective bytes / link bytes/s               (communication)
            + kernels launched x time per launch, + one call  (overhead)

The three are summed, not max'ed as in a roofline: XLA runs a step's kernels one after another,
each mostly compute- or memory-bound, and its collectives between them, so a step is closer to
the sum of its parts than to the largest (BENCHMARKS.md compares both with measured steps). FLOPs
are the matrix products of the step before partitioning; bytes are XLA's cost analysis with the
whole-table passes of gathers and scatters taken out (rankjax.perf.profiling.table_passes);
collective bytes are read from the compiled HLO (rankjax.perf.hlo_stats).

Kernels are the instructions of the compiled program's entry computation (a fusion is one);
their cost is what a small step is made of. On a CPU the time per kernel and per call are measured
(a chain of tiny sorts, each a kernel of its own); on a GPU they are GPU_LAUNCH_S per kernel,
fitted on one H200 (jax 0.11.2, 2026-11-29: four configs' measured steps less their memory term,
over their 82-144 kernels, gave 7.5-12.8 us a kernel), and a typical call overhead (GPU_CALL_S).

Peaks: a GPU kind from the datasheet table (rankjax.perf.roofline.GPU_PEAKS) with its NVLink
bandwidth per direction; "cpu" from a calibration on this host, where the simulated devices
share the host's cores and memory, so their collectives are copies through host memory. The
program is compiled for the visible backend: for a GPU kind predicted from a CPU host the
FLOPs and collectives are the step's, but the bytes are what XLA:CPU's fusions would move.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections

from rankjax import partitioner
from rankjax.embedding.sharding import row_wise
from rankjax.experiment import abstract_state, compile_abstract
from rankjax.perf import hlo_stats, roofline
from rankjax.perf.profiling import _bytes_per_device, step_costs, table_passes

# NVLink bytes/s per direction per GPU, from the datasheets of rankjax.perf.roofline.GPU_PEAKS:
# H100/H200 SXM 900 GB/s NVLink 4 (both directions), H100 PCIe 600 GB/s over its NVLink bridge,
# A100 SXM 600 GB/s NVLink 3.
LINK_BYTES_PER_S = {"NVIDIA H200 SXM": 450e9, "NVIDIA H100 SXM": 450e9, "NVIDIA H100 PCIe": 300e9,
                    "NVIDIA A100 80GB": 300e9, "NVIDIA A100 40GB": 300e9}
# A kernel of the step on a GPU (fitted on an H200, see the module doc; the typical 5 us launch
# latency predicted 0.44-0.73 of the measured steps); a jitted call's dispatch (a typical figure).
GPU_LAUNCH_S, GPU_CALL_S = 10e-6, 50e-6
CALIBRATION_CHAIN = 200  # Tiny sorts in the CPU launch calibration.
DEVICE_KINDS = ("cpu", "h100", "h100-pcie", "h200", "a100", "a100-40gb")
_KIND_WORDS = {"h100": "H100 SXM", "h100-pcie": "H100 PCIe", "h200": "H200", "a100": "A100 80GB",
               "a100-40gb": "A100 40GB"}


@dataclasses.dataclass(frozen=True)
class Peak:
  """What a step's parts are divided by: peaks of one unit (a GPU, or the whole CPU host)."""
  name: str
  flops_per_s: float
  bytes_per_s: float
  link_bytes_per_s: float
  host_shared: bool  # Simulated CPU devices: one unit runs every device's work.
  launch_s: float = GPU_LAUNCH_S  # Per kernel of a device's program.
  call_s: float = GPU_CALL_S  # Per step: dispatch of the jitted call.


def peak_for(kind: str, device: jax.Device, dtype: str) -> Peak:
  """The peaks of `kind` (one of DEVICE_KINDS) for matrix products in `dtype` (fp32/tf32/bf16)."""
  if kind == "cpu":
    measured = roofline.calibrate_cpu(device, "bf16" if dtype == "bf16" else "fp32")
    flops = next(iter(measured.flops.values()))
    launch_s, call_s = calibrate_cpu_launch(device)
    return Peak(measured.name, flops, measured.bytes_per_s, measured.bytes_per_s, host_shared=True,
                launch_s=launch_s, call_s=call_s)
  gpu = roofline.gpu_peak(_KIND_WORDS[kind])
  assert gpu is not None, kind
  return Peak(gpu.name, gpu.flops[dtype], gpu.bytes_per_s, LINK_BYTES_PER_S[gpu.name], host_shared=False)


def calibrate_cpu_launch(device: jax.Device) -> tuple[float, float]:
  """(seconds per kernel, seconds per call) of XLA:CPU here: a jitted chain of CALIBRATION_CHAIN
  tiny sorts (each sort and the add before it are kernels of their own) against a single add."""
  x = jax.device_put(jnp.arange(8, dtype=jnp.float32), device)

  def chain(x):
    for _ in range(CALIBRATION_CHAIN):
      x = jnp.sort(x * -1.0)
    return x

  one, many = partitioner.jit(lambda x: x + 1.0), partitioner.jit(chain)
  call_s = roofline._best_seconds(lambda: jax.block_until_ready(one(x)))
  chain_s = roofline._best_seconds(lambda: jax.block_until_ready(many(x)))
  kernels = _entry_kernels(many.lower(x).compile().as_text())
  return max(chain_s - call_s, 0.0) / max(kernels, 1), call_s


_ENTRY = re.compile(r"^ENTRY [^\n]*\{\n(.*?)^\}", re.M | re.S)
_OPCODE = re.compile(r"=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")
NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def _entry_kernels(hlo_text: str) -> int:
  """Instructions of a compiled module's entry computation that run as kernels (a fusion counts once)."""
  entry = _ENTRY.search(hlo_text)
  if not entry:
    return 0
  return sum(1 for line in entry.group(1).splitlines()
             if (m := _OPCODE.search(line)) and m.group(1) not in NOT_KERNELS)


_DIMS = re.compile(r"(lhs_batch_dims|lhs_contracting_dims|rhs_batch_dims|rhs_contracting_dims)=\{([\d,]*)\}")


def dot_shapes(hlo_text: str) -> list[tuple]:
  """Every `dot` of an HLO module as (dtype, lhs shape, rhs shape, dimension numbers), from the
  module before partitioning (whole-step shapes)."""
  shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
  dots = []
  for line in hlo_text.splitlines():
    m = roofline._INSTRUCTION.match(line)
    if not m:
      continue
    shapes[m.group(1)] = (m.group(2), tuple(int(d) for d in m.group(3).split(",") if d))
    dot = roofline._DOT.search(line)
    if not (dot and dot.group(1) in shapes and dot.group(2) in shapes):
      continue
    dims = {k: tuple(int(d) for d in v.split(",") if d) for k, v in _DIMS.findall(line)}
    numbers = ((dims.get("lhs_contracting_dims", ()), dims.get("rhs_contracting_dims", ())),
               (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())))
    dots.append((shapes[dot.group(1)][0], shapes[dot.group(1)][1], shapes[dot.group(2)][1], numbers))
  return dots


_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
_dot_seconds_cache: dict[tuple, float] = {}


def measure_dots(hlo_text: str, device: jax.Device) -> float:
  """Seconds of all the module's matrix products run one at a time on `device`: each distinct
  shape jitted alone and timed (best of a few runs), so the compute part of a CPU prediction is
  what XLA:CPU achieves on those shapes, not the calibration matmul's peak."""
  total = 0.0
  for dtype, lhs, rhs, numbers in dot_shapes(hlo_text):
    key = (dtype, lhs, rhs, numbers, device.id)
    if key not in _dot_seconds_cache:
      jdtype = _DTYPES.get(dtype, jnp.float32)
      a = jax.device_put(jnp.ones(lhs, jdtype), device)
      b = jax.device_put(jnp.ones(rhs, jdtype), device)
      dot = partitioner.jit(lambda a, b, numbers=numbers: jax.lax.dot_general(a, b, numbers))
      _dot_seconds_cache[key] = roofline._best_seconds(lambda: jax.block_until_ready(dot(a, b)))
    total += _dot_seconds_cache[key]
  return total


def predict_from_costs(matmul_flops: float, bytes_accessed_per_device: float, collective_bytes_per_device: float,
                       num_devices: int, batch_size: int, peak: Peak, kernels_per_device: int = 0) -> dict:
  """The prediction from a step's whole-step matmul FLOPs and per-device bytes (see the module doc)."""
  units = 1 if peak.host_shared else num_devices  # Who shares the work.
  per_unit = num_devices / units
  compute_s = matmul_flops / units / peak.flops_per_s
  memory_s = bytes_accessed_per_device * per_unit / peak.bytes_per_s
  collective_s = collective_bytes_per_device * per_unit / peak.link_bytes_per_s
  overhead_s = kernels_per_device * per_unit * peak.launch_s + peak.call_s
  step_s = compute_s + memory_s + collective_s + overhead_s
  return {"compute_s": compute_s, "memory_s": memory_s, "collective_s": collective_s, "overhead_s": overhead_s,
          "kernels_per_device": kernels_per_device,
          "step_s": step_s, "roofline_s": max(compute_s, memory_s + collective_s),
          "samples_per_s": batch_size / step_s, "peak": peak.name, "peak_values": dataclasses.asdict(peak)}


def predict(config: ml_collections.ConfigDict, manifest: dict, devices: list[jax.Device], kind: str,
            peak: Peak | None = None) -> dict:
  """Compiles the config's train step for `devices` from abstract inputs (twice: the second with
  grown tables, to take the whole-table passes out) and predicts its time on `kind`."""
  exp, lowered, compiled = compile_abstract(config, manifest, devices)
  n = len(devices)
  costs = step_costs(lowered, compiled, n)
  table_bytes = _bytes_per_device(abstract_state(exp, config.seed).embedding)
  costs.update(table_passes(config, manifest, devices, costs["bytes_accessed_per_device"], table_bytes))
  matmul = costs["matmul_flops_by_dtype"]
  dtype = roofline.compute_dtype(matmul, "cpu" if kind == "cpu" else "gpu")
  peak = peak or peak_for(kind, devices[0], dtype)
  collective = sum(o.bytes for o in hlo_stats.collectives(compiled.as_text())  # The path a step takes.
                   if row_wise.FALLBACK_SCOPE not in o.op_name)
  prediction = predict_from_costs(sum(matmul.values()), costs["bytes_accessed_without_table_passes_per_device"],
                                  collective, n, config.train.batch_size, peak, _entry_kernels(compiled.as_text()))
  if kind == "cpu":  # Measured products instead of FLOPs at the calibration matmul's rate.
    unpartitioned = lowered.as_text(dialect="hlo")
    measured = measure_dots(unpartitioned, devices[0]) - peak.call_s * len(dot_shapes(unpartitioned))
    prediction["step_s"] += max(measured, 0.0) - prediction["compute_s"]
    prediction["compute_s"] = max(measured, 0.0)
    prediction["samples_per_s"] = config.train.batch_size / prediction["step_s"]
  return {**prediction, "matmul_flops": sum(matmul.values()), "compute_dtype": dtype,
          "bytes_accessed_per_device": costs["bytes_accessed_without_table_passes_per_device"],
          "collective_bytes_per_device": collective, "devices": n,
          "memory_per_device": costs["memory_per_device"]}
