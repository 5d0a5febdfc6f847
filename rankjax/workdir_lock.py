"""One writer per workdir: an advisory lock (flock) on WORKDIR/.lock, held for the run, whose
content names the holder (host, pid, since). A second run exits 2 naming it; a lock file left by
a dead process holds no flock and is taken over."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket

from rankjax.errors import ConfigError


class WorkdirLock:
  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / ".lock"
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip()
      os.close(fd)
      try:
        info = json.loads(holder)
        who = f"pid {info['pid']} on {info['host']} since {info['since']}"
      except (ValueError, KeyError, TypeError):
        who = "another process"
      raise ConfigError("--workdir", f"{self.path.parent} is in use by {who} (one run per workdir; "
                        "wait for it, stop it, or choose another --workdir)") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
                            ).encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
