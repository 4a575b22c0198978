"""Benchmarks of ebmm_tf: meta-training step time, FLOPs against this machine's matmul peak, scaling, serving
latency and memory. ``python -m benchmarks.run [--smoke | --quick] [--output=bench.json]``; see
``docs/performance.md`` for the measured tables and what the ratios mean.

Every measured configuration runs in its own subprocess (``python -m benchmarks.worker``), so that its peak
resident memory (``getrusage`` max RSS, monotone within a process) belongs to it alone, and every worker
times a large float32 matmul right before and after its own measurement, so that achieved GFLOP/s are
reported as a fraction of the peak *at that moment* on a machine whose load may change.
"""
