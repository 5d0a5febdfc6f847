"""A train step's predicted time on a device kind, from its compiled program alone (no step runs).

  step time = matrix-product FLOPs / peak FLOP/s            (compute)
            + bytes accessed without whole-table passes / peak bytes/s   (memory)
            + collective bytes / link bytes/s               (communication)

The three are summed, not max'ed as in a roofline: XLA runs a step's kernels one after another,
each mostly compute- or memory-bound, and its collectives between them, so a step is closer to
the sum of its parts than to the largest (BENCHMARKS.md compares both with measured steps). FLOPs
are the matrix products of the step before partitioning; bytes are XLA's cost analysis with the
whole-table passes of gathers and scatters taken out (rankjax.perf.profiling.table_passes);
collective bytes are read from the compiled HLO (rankjax.perf.hlo_stats).

Peaks: a GPU kind from the datasheet table (rankjax.perf.roofline.GPU_PEAKS) with its NVLink
bandwidth per direction; "cpu" from a calibration on this host, where the simulated devices
share the host's cores and memory, so their collectives are copies through host memory. The
program is compiled for the visible backend: for a GPU kind predicted from a CPU host the
FLOPs and collectives are the step's, but the bytes are what XLA:CPU's fusions would move.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from rankjax.embedding.sharding import row_wise
from rankjax.experiment import abstract_state, compile_abstract
from rankjax.perf import hlo_stats, roofline
from rankjax.perf.profiling import _bytes_per_device, step_costs, table_passes

# NVLink bytes/s per direction per GPU, from the datasheets of rankjax.perf.roofline.GPU_PEAKS:
# H100/H200 SXM 900 GB/s NVLink 4 (both directions), H100 PCIe 600 GB/s over its NVLink bridge,
# A100 SXM 600 GB/s NVLink 3.
LINK_BYTES_PER_S = {"NVIDIA H200 SXM": 450e9, "NVIDIA H100 SXM": 450e9, "NVIDIA H100 PCIe": 300e9,
                    "NVIDIA A100 80GB": 300e9, "NVIDIA A100 40GB": 300e9}
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


def peak_for(kind: str, device: jax.Device, dtype: str) -> Peak:
  """The peaks of `kind` (one of DEVICE_KINDS) for matrix products in `dtype` (fp32/tf32/bf16)."""
  if kind == "cpu":
    measured = roofline.calibrate_cpu(device, "bf16" if dtype == "bf16" else "fp32")
    flops = next(iter(measured.flops.values()))
    return Peak(measured.name, flops, measured.bytes_per_s, measured.bytes_per_s, host_shared=True)
  gpu = roofline.gpu_peak(_KIND_WORDS[kind])
  assert gpu is not None, kind
  return Peak(gpu.name, gpu.flops[dtype], gpu.bytes_per_s, LINK_BYTES_PER_S[gpu.name], host_shared=False)


def predict_from_costs(matmul_flops: float, bytes_accessed_per_device: float, collective_bytes_per_device: float,
                       num_devices: int, batch_size: int, peak: Peak) -> dict:
  """The prediction from a step's whole-step matmul FLOPs and per-device bytes (see the module doc)."""
  units = 1 if peak.host_shared else num_devices  # Who shares the work.
  per_unit = num_devices / units
  compute_s = matmul_flops / units / peak.flops_per_s
  memory_s = bytes_accessed_per_device * per_unit / peak.bytes_per_s
  collective_s = collective_bytes_per_device * per_unit / peak.link_bytes_per_s
  step_s = compute_s + memory_s + collective_s
  return {"compute_s": compute_s, "memory_s": memory_s, "collective_s": collective_s,
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
                                  collective, n, config.train.batch_size, peak)
  return {**prediction, "matmul_flops": sum(matmul.values()), "compute_dtype": dtype,
          "bytes_accessed_per_device": costs["bytes_accessed_without_table_passes_per_device"],
          "collective_bytes_per_device": collective, "devices": n,
          "memory_per_device": costs["memory_per_device"]}
