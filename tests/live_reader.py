"""A second process that queries the store while ingestion runs (used by test_live_queries).

Each query checks what an analyst must never see: an error, a count that goes backwards, or
a user whose visible events are not a prefix of what that user sent (a torn or reordered
batch). Rating events carry ``event_id = <user>-<seq>`` for the prefix check.

Each count that differs from the last one seen is also printed at once on stdout, one a line,
so that the test can pace production by what the reader has observed.
"""

from __future__ import annotations

import json
import sys
import time

from streams.store.store_views import connect_store

GAPS = """
    SELECT count(*) FROM (
        SELECT user_id, count(*) AS seen, max(CAST(split_part(event_id, '-', 2) AS INTEGER)) AS top
        FROM ratings GROUP BY user_id
    ) WHERE seen != top + 1"""


def main(store: str, out: str, target: int, deadline_s: float) -> None:
    report = {"queries": 0, "error_count": 0, "errors": [], "backwards": 0, "gaps": 0, "counts": []}
    con = connect_store(store)
    last = 0
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        try:
            count = con.execute("SELECT count(*) FROM ratings").fetchone()[0]
            gaps = con.execute(GAPS).fetchone()[0]
        except Exception as exc:  # every failure is the finding, so record them all
            report["error_count"] += 1
            if len(report["errors"]) < 5:
                report["errors"].append(repr(exc))
            continue
        report["queries"] += 1
        report["gaps"] += int(gaps > 0)
        report["backwards"] += int(count < last)
        report["counts"].append(count)
        if count != last or report["queries"] == 1:
            print(count, flush=True)
        last = count
        if count >= target:
            break
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
