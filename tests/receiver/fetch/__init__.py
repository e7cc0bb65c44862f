"""Tests of receiver/fetch/."""
