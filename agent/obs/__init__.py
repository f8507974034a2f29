"""Observability: Prometheus metrics of the running agent (registry, HTTP listener, node-exporter textfile)."""
