"""``python -m jitauth``: the same as the ``jitauth`` command."""

import sys

from jitauth.cli import main

if __name__ == "__main__":
    sys.exit(main())
