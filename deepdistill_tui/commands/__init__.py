"""The headless command line, one module per pipeline stage; `deepdistill_tui.cli` builds the parser."""
