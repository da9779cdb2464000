"""Benchmarks of the node (not run in CI): `python -m bench`, see BENCHMARKS.md."""

import node  # noqa: F401  (first: it sets the thread settings torch must load with)
