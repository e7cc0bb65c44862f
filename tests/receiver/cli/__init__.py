"""Tests of receiver/cli/."""
