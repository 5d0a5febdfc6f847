"""Train from a checkout: `python scripts/train.py --config configs/default.py --workdir DIR`."""

import sys

from rankjax.cli.main import main

if __name__ == "__main__":
  sys.exit(main([sys.argv[0], "train", *sys.argv[1:]]))
