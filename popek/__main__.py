"""``python -m vmm`` is the ``popek`` command."""

import sys

from popek.cli import main

sys.exit(main())
