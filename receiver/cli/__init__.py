"""The `fluxhook` command line: one module per command group."""
