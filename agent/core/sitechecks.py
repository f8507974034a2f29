"""Checks of a whole site that need the runtime's own code (the birth message). They live in the core, not in
the config loader, so that config imports nothing of the daemon; ``load_site_checked`` is what ``run``,
``validate`` and a reload use."""

from __future__ import annotations

from pathlib import Path

from agent import __version__
from agent.config import Site, load_site
from agent.config.yamlloc import load_file
from agent.core.pipeline import Pipeline
from agent.errors import ConfigError, Problem
from agent.outbox import row_size
from agent.uplink.codec import dumps
from agent.uplink.topics import Topics

BIRTH_MARGIN = 128  # the "seq" member added when the birth is published, the ts/version growing, the "config" name
TS_WIDTH = 1_800_000_000.123  # a timestamp as wide as the real ones: the same file gives the same size


def birth_problem(site: Site, line: int | None) -> Problem | None:
    """The birth message (alias map of every device and point, with labels) must fit what the uplink sends
    and the outbox stores: else it is dropped at every start and telemetry can never be decoded."""
    topics = Topics(site.model.uplink.topic_prefix, site.id)
    doc = {"v": 1, "site": site.id, "agent": __version__, "ts": TS_WIDTH,
           **Pipeline(site.devices, site.model.pipeline.max_silence).birth()}
    size = row_size(topics.birth, dumps(doc)) + BIRTH_MARGIN
    limit = min(site.model.uplink.max_message_bytes, site.model.outbox.max_bytes // 4)
    if size <= limit:
        return None
    return Problem(site.file, line, "devices", f"the birth message of this site (every device, point and label) "
                   f"would be about {size} bytes, over the {limit} bytes the uplink sends (uplink.max_message_bytes, "
                   "a quarter of outbox.max_bytes): raise them, or use fewer devices, points or labels")


def load_site_checked(path: str | Path, *, strict: bool = True) -> Site:
    """``load_site`` plus the checks of the whole site; ConfigError with every problem found."""
    site = load_site(path, strict=strict)
    try:
        line = load_file(site.file).line_of(("devices",))
    except ConfigError:
        line = None
    too_big = birth_problem(site, line)
    if too_big is not None:
        raise ConfigError([too_big, *site.problems])
    return site
