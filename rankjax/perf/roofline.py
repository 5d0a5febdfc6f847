"""Hardware peaks for the roofline: a table of GPU datasheet figures, a CPU calibration measured at
run time, the matrix-product FLOPs of an HLO module by dtype, and the roofline bound of a step.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import partitioner

TERA = 1e12


@dataclasses.dataclass(frozen=True)
class DevicePeak:
  """Peak matrix FLOP/s by compute dtype and memory bandwidth (bytes/s) of one device (or, for a
  CPU, of the whole host: XLA's CPU devices share its cores)."""
  name: str
  flops: dict[str, float]  # "bf16" | "tf32" | "fp32" -> FLOP/s.
  bytes_per_s: float
  source: str  # Where the figures come from.


def _nvidia(name: str, bf16_tflops: float, tf32_tflops: float, fp32_tflops: float, tb_per_s: float) -> DevicePeak:
  return DevicePeak(name, {"bf16": bf16_tflops * TERA, "tf32": tf32_tflops * TERA, "fp32": fp32_tflops * TERA},
                    tb_per_s * TERA, "NVIDIA datasheet")


# Dense (no structured sparsity) figures from NVIDIA's datasheets: "NVIDIA H100 Tensor Core GPU"
# datasheet (H100 SXM: BF16 1,979 TFLOPS with sparsity = 989 dense, TF32 989 sparse = 494 dense,
# FP32 67 TFLOPS, 3.35 TB/s HBM3; H100 PCIe: BF16 756, TF32 378, FP32 51, 2 TB/s), "NVIDIA H200
# Tensor Core GPU" datasheet (H200 SXM: H100 SXM's FLOPs, 4.8 TB/s HBM3e) and "NVIDIA A100 Tensor
# Core GPU" datasheet (BF16 312, TF32 156, FP32 19.5 TFLOPS; 2,039 GB/s at 80 GB SXM, 1,555 GB/s
# at 40 GB). An entry applies when each of its words is in jax's device_kind; the first that
# applies wins (most specific first).
GPU_PEAKS: tuple[tuple[tuple[str, ...], DevicePeak], ...] = (
    (("H200",), _nvidia("NVIDIA H200 SXM", 989, 494, 67, 4.8)),
    (("H100", "PCIe"), _nvidia("NVIDIA H100 PCIe", 756, 378, 51, 2.0)),
    (("H100",), _nvidia("NVIDIA H100 SXM", 989, 494, 67, 3.35)),
    (("A100", "40GB"), _nvidia("NVIDIA A100 40GB", 312, 156, 19.5, 1.555)),
    (("A100",), _nvidia("NVIDIA A100 80GB", 312, 156, 19.5, 2.039)),
)

# The CPU calibration's shapes: a float32 [2048, 512] x [512, 512] product (the small DLRM's
# widest layers at its batch) and an add of two 128 MiB arrays (reads 2, writes 1), 4x a 32 MiB L3.
CALIBRATION_MATMUL = (2048, 512, 512)
CALIBRATION_ELEMENTS = 32 * 1024 * 1024
CALIBRATION_REPEATS = 5


def gpu_peak(device_kind: str) -> DevicePeak | None:
  """The datasheet peak for a jax `device_kind` ("NVIDIA H100 80GB HBM3", ...), or None."""
  kind = device_kind.lower()
  for words, peak in GPU_PEAKS:
    if all(w.lower() in kind for w in words):
      return peak
  return None


def _best_seconds(run: Callable[[], None]) -> float:
  """The fastest of a few runs of `run` (which blocks until its result is ready), after one warm-up."""
  run()
  best = float("inf")
  for _ in range(CALIBRATION_REPEATS):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


def calibrate_cpu(device: jax.Device, dtype: str = "fp32") -> DevicePeak:
  """Measures this host: the best of a few runs of a jitted matmul (FLOP/s in `dtype`) and of a
  large array add (bytes/s). A peak achievable by XLA here, not a datasheet figure."""
  m, k, n = CALIBRATION_MATMUL
  jnp_dtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
  rng = np.random.default_rng(0)
  a = jax.device_put(rng.standard_normal((m, k), np.float32).astype(jnp_dtype), device)
  b = jax.device_put(rng.standard_normal((k, n), np.float32).astype(jnp_dtype), device)
  matmul = partitioner.jit(jnp.matmul)
  matmul_s = _best_seconds(lambda: jax.block_until_ready(matmul(a, b)))
  # The sum overwrites a donated operand: a fresh output would time page faults, not bandwidth.
  add = partitioner.jit(jnp.add, donate_argnums=0)
  x = [jax.device_put(np.ones(CALIBRATION_ELEMENTS, np.float32), device)]
  y = jax.device_put(np.ones(CALIBRATION_ELEMENTS, np.float32), device)

  def add_in_place():
    x[0] = jax.block_until_ready(add(x[0], y))

  add_s = _best_seconds(add_in_place)
  flops = {dtype: 2.0 * m * k * n / matmul_s}
  bytes_per_s = 3 * 4 * CALIBRATION_ELEMENTS / add_s
  return DevicePeak(f"{device.device_kind} (calibrated)", flops, bytes_per_s,
                    f"measured: {dtype} matmul {m}x{k}x{n}, float32 add of {CALIBRATION_ELEMENTS:,} elements")


# HLO text: `name = f32[2048,512]{1,0} op(...)`; dots list their operands by name.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_DOT = re.compile(r"\bdot\(\s*%?([\w.\-]+)\s*,\s*%?([\w.\-]+)\s*\)")
_LHS_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


def dot_flops_by_dtype(hlo_text: str) -> dict[str, float]:
  """2 * output elements * contracted size for every `dot` in an HLO module, by operand dtype.

  On the module before SPMD partitioning (`lowered.as_text(dialect="hlo")`) the shapes are the
  whole step's; a dot inside shard_map sees one shard's shapes.
  """
  shapes: dict[str, tuple[str, list[int]]] = {}
  flops: dict[str, float] = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, dtype, dims = m.group(1), m.group(2), [int(d) for d in m.group(3).split(",") if d]
    shapes[name] = (dtype, dims)
    dot = _DOT.search(line)
    contracting = _LHS_CONTRACTING.search(line)
    if not (dot and contracting and dot.group(1) in shapes):
      continue
    lhs_dtype, lhs_dims = shapes[dot.group(1)]
    contracted = int(np.prod([lhs_dims[int(d)] for d in contracting.group(1).split(",") if d]))
    flops[lhs_dtype] = flops.get(lhs_dtype, 0.0) + 2.0 * float(np.prod(dims)) * contracted
  return flops


def compute_dtype(dot_flops: dict[str, float], platform: str) -> str:
  """The peak that applies to the step's matrix products: bf16/f16 operands use the bf16 peak;
  float32 ones run as TF32 on NVIDIA GPUs at jax's default matmul precision."""
  if not dot_flops:
    return "fp32"
  dominant = max(dot_flops, key=dot_flops.get)
  if dominant in ("bf16", "f16"):
    return "bf16"
  precision = jax.config.jax_default_matmul_precision
  if platform == "gpu" and precision in (None, "default", "bfloat16", "tensorfloat32"):
    return "tf32"
  return "fp32"


def bound(flops: float, bytes_accessed: float, step_s: float, peak_flops: float, peak_bytes_per_s: float) -> dict:
  """The roofline: the step cannot take less than max(compute time, memory time) at the peaks."""
  compute_s, memory_s = flops / peak_flops, bytes_accessed / peak_bytes_per_s
  bound_s = max(compute_s, memory_s)
  return {"compute_s": compute_s, "memory_s": memory_s, "bound_s": bound_s,
          "bound_by": "compute" if compute_s >= memory_s else "memory",
          "fraction_of_roofline": bound_s / step_s if step_s > 0 else None}
