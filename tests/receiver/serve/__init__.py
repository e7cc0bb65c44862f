"""Tests of receiver/serve/."""
