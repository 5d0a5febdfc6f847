"""Multi-process start-up on JAX's own multi-controller runtime (`jax.distributed`).

Explicit settings from config win; otherwise JAX's cluster auto-detection (SLURM, Open MPI,
Kubernetes/JobSet, ...) is used when the environment looks like a multi-process launch. A lost
peer is detected by the coordination service's heartbeat, so no process hangs forever.
"""

from __future__ import annotations

import os

import jax
import ml_collections

# Environment variables that mean "several processes were launched": then auto-detection runs.
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "JOBSET_NAME", "JAX_COORDINATOR_ADDRESS")


def _launched_as_cluster() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return any(k in os.environ for k in _CLUSTER_ENV[3:])


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Starts jax.distributed when configured or launched as a cluster; returns whether it did."""
  d = config.distributed
  explicit = bool(d.coordinator_address) or d.num_processes > 1
  if not explicit and not _launched_as_cluster():
    return False
  if d.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  kwargs = dict(initialization_timeout=d.initialization_timeout_s, heartbeat_timeout_seconds=d.heartbeat_timeout_s)
  if explicit:
    kwargs.update(coordinator_address=d.coordinator_address or None,
                  num_processes=d.num_processes if d.num_processes > 0 else None,
                  process_id=d.process_id if d.process_id >= 0 else None)
  jax.distributed.initialize(**kwargs)
  return True
