"""fedlocal's benchmark suite: ``python -m bench.run`` (see docs/benchmarks.md).

Nothing here is part of the app; the app's packages are imported, never changed.
"""
