"""Observability: Prometheus metrics, log format, and the filter that keeps secrets out of logs."""
