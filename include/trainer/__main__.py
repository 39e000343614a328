"""`python -m include.trainer`: the training image's entry point (see `include.trainer.cli`)."""

import sys

from include.trainer.cli import main

sys.exit(main())
