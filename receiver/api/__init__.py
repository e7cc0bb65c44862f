"""The receiver's own HTTP API beside the provider callbacks (sweep trigger, and later submit / wait)."""
