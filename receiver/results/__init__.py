"""Where result files are kept: the `ResultStore` interface and its backends (a local folder, object storage)."""
