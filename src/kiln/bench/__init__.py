"""Latency and throughput of inference artifacts, with reports and plots."""

from kiln.bench.harness import Latency, Throughput, measure_latency, measure_throughput
from kiln.bench.run_bench import BenchSettings, bench_run, format_report

__all__ = ["BenchSettings", "Latency", "Throughput", "bench_run", "format_report",
           "measure_latency", "measure_throughput"]
