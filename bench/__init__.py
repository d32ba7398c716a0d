"""The benchmarks: scripts run from a checkout, `python bench/run.py` (or `python -m bench.run`
from the repository's root), and the modules they share (`bench.run`'s scheduler process and
profiler, `bench.baselines`' bare servers). Never imported by the scheduler."""
