"""``python -m mpokit`` is the ``mpokit`` command."""

import sys

from .cli import main

sys.exit(main())
