"""Benchmarks of the control plane against a real controller process and a real Envoy."""
