"""The engine: the runtime (wiring), jobs, the sweep, polling, downloads, leases, the relay, the feed."""
