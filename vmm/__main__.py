"""``python -m vmm`` is the ``popek`` command."""

import sys

from vmm.cli import main

sys.exit(main())
