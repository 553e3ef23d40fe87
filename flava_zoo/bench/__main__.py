"""``python -m flava_zoo.bench``: the same as ``flava-zoo bench``."""

import sys

from .cli import main

sys.exit(main(prog="python -m flava_zoo.bench"))
