"""Shared rate limits and calendar quotas: windows, counters, and the quota service."""
