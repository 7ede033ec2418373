"""`python -m kd_bundle.student cfg.json`: one adapter training outside Prefect (kd_bundle.student.training._main)."""

from __future__ import annotations

import logging
import sys

from kd_bundle.student.training import _main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(_main(sys.argv[1:]))
