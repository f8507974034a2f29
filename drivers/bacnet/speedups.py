"""A cache for the slowest step of bacpypes3's decoding (issue 15).

Every ``Sequence`` that bacpypes3 builds (about ten for each property of a ReadPropertyMultiple reply) asks
``inspect.getattr_static(self, attr)`` for each element it leaves empty, to skip elements defined as a
``property``. ``getattr_static`` walks the class's MRO and its ``__dict__`` entries each time: measured with
py-spy on bench/site_poll.py ``--bacnet 20`` it was 18 % of the agent's CPU. The answer depends only on the
class and the name as long as the instance itself does not hold the name (it never does while ``__init__``
clears it), so it is computed once per (class, name).

``install()`` gives ``bacpypes3.constructeddata`` (only that module) an ``inspect`` whose ``getattr_static``
keeps that cache and hands everything else to the real one; the rest of ``inspect`` is the real module. The
library's code and results are unchanged (tests/bacnet/test_speedups.py compares both on every Sequence
class and on decoded replies). The driver installs it when imported; it then applies to the whole process.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

_MISSING = object()


class _CachedInspect(types.ModuleType):
    """``inspect`` with a ``getattr_static`` cached per (class, name) for instances that do not hold the name."""

    def __init__(self) -> None:
        super().__init__("inspect")
        self._cache: dict[tuple[type, str], Any] = {}
        self.real_calls = 0  # how often the real getattr_static ran (for tests)

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    def getattr_static(self, obj: Any, attr: str, *default: Any) -> Any:
        holder = obj.__dict__ if not isinstance(obj, type) and hasattr(obj, "__dict__") else None
        if holder is None or attr in holder:
            self.real_calls += 1
            return inspect.getattr_static(obj, attr, *default)
        key = (type(obj), attr)
        found = self._cache.get(key, _MISSING)
        if found is _MISSING:
            self.real_calls += 1
            try:
                found = inspect.getattr_static(obj, attr)
            except AttributeError:
                found = AttributeError
            self._cache[key] = found
        if found is AttributeError:
            if default:
                return default[0]
            raise AttributeError(attr)
        return found


CACHED = _CachedInspect()


def install() -> None:
    """Give bacpypes3's constructed-data module the cached ``getattr_static`` (idempotent)."""
    import bacpypes3.constructeddata as cd

    if getattr(cd, "inspect", None) is not CACHED:
        cd.inspect = CACHED


def uninstall() -> None:
    import bacpypes3.constructeddata as cd

    cd.inspect = inspect
