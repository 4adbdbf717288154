"""Benchmarks (speed, memory). Never part of the test run; each module runs
as ``python -m bench.<name>`` and reports ratios to throughputs measured in
the same run, since absolute times drift from run to run."""
