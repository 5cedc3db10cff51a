#!/usr/bin/env python3
"""The seed's trigger, kept where users look for it: `scripts/mqtt_trigger.py device-1` or `--all`.

Same as `fota-trigger` (also inside the lab: `docker compose run --rm cli fota-trigger --all`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "services"))

from fotalab.trigger import main  # noqa: E402

sys.exit(main())
