"""`python -m utamoe.cli`: the `utamoe` command."""

import sys

from utamoe.cli import main

sys.exit(main())
