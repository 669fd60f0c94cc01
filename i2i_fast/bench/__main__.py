"""``python -m i2i_fast.bench``: the main job (i2i_fast.bench.cli)."""

import sys

from .cli import main

sys.exit(main())
