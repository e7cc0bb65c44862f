"""Fetching result files from a provider's CDN safely: host and address checks, caps, hashing.

receiver/fetch/policy.py says what may be fetched and accepted, receiver/fetch/download.py
does the transfer, receiver/fetch/transport.py is the download client's connection (one GET each,
bounded read-ahead), receiver/fetch/errors.py says why one failed.
"""
