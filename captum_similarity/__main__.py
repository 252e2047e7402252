"""``python -m captum_similarity explain ...``: the command line
(see :mod:`captum_similarity.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
