"""Standalone example scripts, run as `python examples/NAME.py` (`make demo` runs demo.py); an example imports
peft_grow and libraries only, never another example, and no benchmark imports an example (benchmarks/stories.py
holds the demo's setting for them). A package only so that the tests import them by name."""
