"""Tests of receiver/web/."""
