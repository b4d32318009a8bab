"""Written by setup.py at build time."""
from typing import Any

CONFIG: dict[str, Any]
