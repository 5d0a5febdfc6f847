"""Profile from a checkout: `python scripts/profile_step.py --config configs/default.py --workdir DIR`."""

import sys

from rankjax.cli.main import main

if __name__ == "__main__":
  sys.exit(main([sys.argv[0], "profile", *sys.argv[1:]]))
