"""`pytest benchmarks/experiments -m experiment` runs every experiment in full mode."""
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "experiment: a full-size paper-reproduction experiment (minutes)")
