"""Tests of receiver/results/."""
