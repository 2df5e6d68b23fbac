"""`python -m walletd` is the `walletd` command."""

import sys

from walletd.cli import main

sys.exit(main())
