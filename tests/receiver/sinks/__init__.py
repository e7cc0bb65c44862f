"""Tests of receiver/sinks/."""
