"""The benchmarks behind docs/: run from the repository root as modules, `python -m benchmarks.NAME`.

A package, so that what a benchmark shares is imported by name, never through `sys.path`: sibling modules
(`from benchmarks import speed`; the demo's model, data and training loop are `benchmarks.stories`) and, in
exactness.py, the test suite's tiny models (`from tests.helpers import ...`). The tests import the benchmarks the
same way; pytest puts the repository root on the path (`pythonpath` in pyproject.toml).
"""
