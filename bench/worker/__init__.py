"""The worker benchmark (bench/worker_bench.py) in parts: common, load, process, baseline, runs,
report."""
