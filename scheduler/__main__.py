"""`python -m scheduler` is `orka-scheduler`."""

import sys

from .cli import main

sys.exit(main())
