"""Type stub of the compiled extension rsm._C: its functions and types are typed as Any."""
from typing import Any

Tensor: Any

def __getattr__(name: str) -> Any: ...
