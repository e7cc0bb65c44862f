"""The web layer: the app factory, the callback endpoint, the /v1 API, the /ui pages, file serving."""
