"""Tests of receiver/config/."""
