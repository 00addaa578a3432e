"""Loading operator code by name (``"package.module:function"``), at start-up."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(spec: str, what: str) -> Any:
    """Resolve ``spec`` now, so that a typo is a clear error at start-up, not a failure per client."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from exc
    target = getattr(module, attribute, None)
    if target is None:
        raise ValueError(f"{what} {spec!r}: {module_name!r} has no attribute {attribute!r}")
    if not callable(target):
        raise ValueError(f"{what} {spec!r}: {attribute!r} is not callable")
    return target
