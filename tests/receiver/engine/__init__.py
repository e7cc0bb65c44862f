"""Tests of receiver/engine/."""
