"""Fetching result files from a provider's CDN safely: host and address checks, caps, hashing."""
