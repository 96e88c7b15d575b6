"""``python -m pythia`` runs the command line."""

import sys

from pythia.cli import main

sys.exit(main())
