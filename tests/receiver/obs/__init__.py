"""Tests of receiver/obs/."""
