"""`python -m maestro` is the `maestro` command."""

import sys

from maestro.cli import main

sys.exit(main())
