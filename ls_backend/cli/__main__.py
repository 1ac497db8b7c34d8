"""``python -m ls_backend.cli``: the ``lwc`` command without its installed entry point."""

import sys

from ls_backend.cli import main

if __name__ == "__main__":
    sys.exit(main())
