"""Shared labelled clips (generated once per test session: about half a second per clip)."""

from __future__ import annotations

import pytest

from tests.motion.clips import Clip, clip_set

SEEDS = 4


@pytest.fixture(scope="session")
def labelled_clips() -> list[Clip]:
    return list(clip_set(SEEDS))
