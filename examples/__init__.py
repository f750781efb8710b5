"""Standalone example scripts, run as `python examples/NAME.py` (`make demo` runs demo.py); no example imports
another. A package only so that the benchmarks and the tests import them by name (`from examples import demo`)."""
