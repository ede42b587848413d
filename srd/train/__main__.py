"""``python -m srd.train`` runs the training command line."""

from __future__ import annotations

import sys

from srd.train.command import main

sys.exit(main())
