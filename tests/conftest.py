"""`--quick` (make test-quick): leave out, besides the tests marked slow, the tests listed in
tests/quick_skip.txt — the ones that take more than about a second of CPU each (measured with
--junitxml on the whole suite; their subjects are covered by faster tests in the quick set). The
full suite (make test) runs everything."""
import os

SKIP_FILE = os.path.join(os.path.dirname(__file__), "quick_skip.txt")


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="leave out the long tests listed in tests/quick_skip.txt (make test-quick)")


def _listed():
    with open(SKIP_FILE) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--quick"):
        return
    listed = _listed()
    keep, drop = [], []
    for item in items:
        node = item.nodeid.split("tests/", 1)[-1]
        (drop if any(node == n or node.startswith(n + "[") for n in listed) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

