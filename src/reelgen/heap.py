"""Garbage-collector settings for long-running server processes.

CPython's cyclic collector periodically walks every tracked object; a full collection in a
server holding the web stack, SQLAlchemy and numpy takes tens of milliseconds, during which
the event loop answers nothing: those pauses were most of the submit p99. Objects built at
start-up live as long as the process, so they are moved out of the collector's view once
(`gc.freeze`), and young collections run less often; what requests allocate is still
collected.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Allocations (net of frees) between young collections; CPython's default is 700."""


def settle() -> None:
    """Called once a server's objects are built, just before it starts serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
