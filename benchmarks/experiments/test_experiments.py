"""Full-mode runs of every experiment in rsm.experiments (minutes each; not part of make test,
whose quick modes live in tests/test_experiments_*.py). Results go to results/<name>."""
import pytest

import rsm.experiments as experiments


@pytest.mark.experiment
@pytest.mark.parametrize("name", experiments.names())
def test_experiment_full(name):
    summary = experiments.run(name, quick=False)
    assert isinstance(summary, dict) and summary
