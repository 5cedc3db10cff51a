#!/usr/bin/env python3
"""The seed's trigger, kept where users look for it: `scripts/mqtt_trigger.py device-1` or `--all`.

Same as `fota-trigger` (also inside the lab: `docker compose run --rm cli fota-trigger --all`).
"""
import hostenv  # noqa: F401,I001  (first: re-runs this script in the project's .venv)
import sys


from fotalab.lab.trigger import main  # noqa: E402

sys.exit(main())
