"""`python -m walletd` is the `walletd` command."""

import sys

from walletd.cli.daemon import main

sys.exit(main())
