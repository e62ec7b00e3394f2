"""Keeping the derive worker's state out of the cyclic garbage collector's scans.

The derived state holds a few objects per rating (ratings, sorted keys, lists and pairs as
pydantic models): about 480,000 tracked objects for MovieLens 100k. CPython's collector makes a
full pass over every tracked object whenever the objects that survived its young generations
reach a quarter of the old ones; each poll replaces some of the state, so such passes keep
coming, and each one grows with the state: 230 ms at the end of MovieLens, landing in whichever
poll happened to trigger it. Measured on MovieLens in time order, batches of 1,000 events: 7-9 us
per event, but 23-32 us in the tenths of the stream where a full pass fell.

So after each poll the worker moves what is alive into the collector's permanent generation
(``gc.freeze``), which no pass scans. Frozen objects are still freed by reference counting when
the state drops them; only garbage that references itself in a cycle would stay, and the derive
path makes none (a full collection after a MovieLens run found 0 unreachable objects). A full
sweep at each refresh bounds what any other code could leave behind.
"""

from __future__ import annotations

import gc


def settle_long_lived() -> None:
    """Collect the young generations, then freeze what survived: the next passes skip it."""
    gc.collect(1)
    gc.freeze()


def full_sweep() -> int:
    """One full collection over everything, frozen objects included, then settle again;
    returns how many unreachable objects it found."""
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found
