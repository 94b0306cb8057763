"""Measured options that careloop does not ship: kept for the benchmarks that compare them with the product.

Nothing under careloop/ imports these. Bench scripts import them as `experiments.<module>` (bench/ is on their
path); tests as `bench.experiments.<module>` or with bench/ put on sys.path.
"""
