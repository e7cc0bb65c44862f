"""The receiver, one folder per layer (README "Layout")."""
