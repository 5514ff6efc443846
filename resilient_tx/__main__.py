"""``python -m resilient_tx``: the same as the ``resilient-tx`` command."""

from resilient_tx.app.cli import main

raise SystemExit(main())
