"""`python -m pagrob ...`: the same command as `pagrob ...`, and what torchrun runs (`torchrun ... -m pagrob train`)."""

import sys

from pagrob.cli import main

sys.exit(main())
