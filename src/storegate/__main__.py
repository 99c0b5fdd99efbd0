"""``python -m storegate`` is the same as the ``storegate`` console script."""

from storegate.app.cli import main

raise SystemExit(main())
