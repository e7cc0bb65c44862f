"""fluxhook's receiver: callbacks, the ledger, downloads, the sweep, the API and the gallery.

Layers, top to bottom (each imports only those below; README "Layout"): cli, serve, web, engine,
fetch | sinks, results | store, obs, config, errors.
"""
