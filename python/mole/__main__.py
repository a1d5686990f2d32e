"""python -m mole: the same as the `mole` command."""
import sys

from .cli import main

sys.exit(main())
