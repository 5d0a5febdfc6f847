"""Test set-up: 8 simulated CPU devices, configured before jax is imported; GPU-only tests
(marked `gpu`) skip cleanly unless a GPU backend is visible (run them with
`JAX_PLATFORMS=cuda,cpu pytest -m gpu`)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def _has_gpu() -> bool:
  import jax
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  gpu_tests = [item for item in items if "gpu" in item.keywords]
  if gpu_tests and not _has_gpu():
    skip = pytest.mark.skip(reason="needs a GPU backend (JAX_PLATFORMS=cuda,cpu)")
    for item in gpu_tests:
      item.add_marker(skip)
