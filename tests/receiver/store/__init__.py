"""Tests of receiver/store/."""
