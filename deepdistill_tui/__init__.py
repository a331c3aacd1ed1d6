"""DeepDistill TUI: difficulty-graded reasoning data and SFT, as a terminal app and a headless pipeline."""

__version__ = "0.1.0"
