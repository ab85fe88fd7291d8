"""`python -m conveyor init|setup`: the same as the `conveyor` command."""

import sys

from conveyor.cli import main

sys.exit(main())
