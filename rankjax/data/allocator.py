"""glibc's malloc, set to keep the memory that block-at-a-time parsing frees and takes again.

The parsers allocate NumPy arrays of a few hundred KB per 256 KB block and free them at once.
glibc serves allocations over its mmap threshold (128 KB until a large free raises it) with fresh
mmaps that fault in page by page, and returns freed heap tops to the kernel: in the forked
conversion workers, whose parent never raised the threshold, that was ~1 M page faults and 2 s of
system time for a 380 MB Criteo TSV on 2 workers (BENCHMARKS.md, "Parallel preprocessing").
A fixed threshold of 32 MiB and a trim threshold of 128 MiB keep those arrays on a reused heap.
Other C libraries (and other systems) are left as they are.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems.
TRIM_THRESHOLD = 128 << 20


def reuse_freed_memory() -> bool:
  """Sets glibc's mmap and trim thresholds for this process and the workers it forks later;
  False where there is no glibc mallopt to set them."""
  if not sys.platform.startswith("linux"):
    return False
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
