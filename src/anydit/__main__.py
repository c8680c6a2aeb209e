"""``python -m anydit`` (and ``torchrun -m anydit``) runs the command line."""

import sys

from anydit.cli import main

sys.exit(main())
