"""``python -m deepdistill_tui.core.train RUN_DIR``: the training subprocess (see worker.py)."""

from deepdistill_tui.core.train.worker import main

raise SystemExit(main())
