"""The headless pipeline. Nothing under this package imports textual or rich (tests/test_headless.py)."""
