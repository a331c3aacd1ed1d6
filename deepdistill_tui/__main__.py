from deepdistill_tui.cli import main

raise SystemExit(main())
