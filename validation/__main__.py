"""``python -m validation --feed DIR [--catalog ...] [--params ...] [--state DIR] --json``."""

from validation.cli import main

raise SystemExit(main())
