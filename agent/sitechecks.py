"""Checks of a whole site that need the runtime's own code (the birth message), kept out of config.py so that
config does not import the pipeline (which imports config)."""

from __future__ import annotations

import time

from . import __version__
from .config import Site
from .errors import Problem
from .outbox import row_size
from .uplink.codec import dumps
from .uplink.topics import Topics

BIRTH_MARGIN = 64  # the "seq" member added when the birth is published, and the ts/version growing


def birth_problem(site: Site, line: int | None) -> Problem | None:
    """The birth message (alias map of every device and point, with labels) must fit what the uplink sends
    and the outbox stores: else it is dropped at every start and telemetry can never be decoded."""
    from .pipeline import Pipeline

    topics = Topics(site.model.uplink.topic_prefix, site.id)
    doc = {"v": 1, "site": site.id, "agent": __version__, "ts": round(time.time(), 3),
           **Pipeline(site.devices, site.model.pipeline.max_silence).birth()}
    size = row_size(topics.birth, dumps(doc)) + BIRTH_MARGIN
    limit = min(site.model.uplink.max_message_bytes, site.model.outbox.max_bytes // 4)
    if size <= limit:
        return None
    return Problem(site.file, line, "devices", f"the birth message of this site (every device, point and label) "
                   f"would be about {size} bytes, over the {limit} bytes the uplink sends (uplink.max_message_bytes, "
                   "a quarter of outbox.max_bytes): raise them, or use fewer devices, points or labels")
