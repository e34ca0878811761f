"""Pausing the cyclic garbage collector around bulk work that only allocates.

Validating 10,000 files builds ~1 M long-lived objects (documents, specs); every collection walks all
of them again, and five full collections cost as much as a third of the parse itself. Nothing in that
work creates reference cycles that need collecting before it ends.

Re-enabling the collector alone would only postpone the first walk: the paused work leaves the
youngest generation hundreds of times over its threshold, so the next allocation collects it, all of
it, and then the middle generation does it again. What survives such work is long-lived by nature
(the caller keeps the result), so it goes straight to the oldest generation instead, where only full
collections look at it, as they would have after a few young ones.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable automatic collection inside the block (nesting-safe); re-enable it afterwards.

    On the way out of the outermost pause, the objects still tracked in the young generations are
    moved to the oldest one without being walked (``gc.freeze`` then ``gc.unfreeze``, which also
    resets the young generation's count), unless something else froze objects on purpose (a server
    forking workers does): those stay frozen, and the collector is just re-enabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
