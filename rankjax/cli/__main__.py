"""`python -m rankjax.cli COMMAND ...` is the `rankjax` command."""

import sys

from rankjax.cli.main import main

sys.exit(main())
