"""``make bench-serve``: the page API through Ray Serve against the policy's own page
generation and Ray Serve's own floor, in one run.

Data: ml-100k's ratings and catalogue (``../shared/data/ml-100k``, read in place) written to a
fresh event store; the version is the default model (``BackboneSettings()``: 128 wide, 2
layers) over ml-100k's users, items and genres, published untrained: generation costs the same
whatever the weights learned. K = 10. A local broker takes the impressions.

1. inproc: the version's page generation in this process (no Ray, no HTTP), one request at a
   time: ``LearnedVersion.pages([plan])``, constrained greedy decoding with the KV cache. And
   the whole serving logic the same way (``PageService.pages``: routing, the user's context,
   the plan, generation, the impression queued): service_p50_ms, so that what our own code adds
   is own_overhead_vs_echo = (service_p50_ms - inproc_p50_ms) / echo_p50_ms.
2. echo: a bare Ray Serve FastAPI deployment that returns its JSON body, over HTTP: the floor.
3. serve c1: ``POST /v1/page`` from one client, one request at a time.
4. serve c16: 16 concurrent clients; halfway through, a new version is published and promoted,
   and the swap must fail no request. Then the spool must deliver every impression once.
   The echo deployment at 16 clients is measured too (echo_rps_c16): the framework's ceiling
   on this machine, which no deployment behind the same proxy can pass.
5. serve c16 unbatched (``max_batch_size`` 1): what ``@serve.batch`` adds, kept as a figure.

Every HTTP phase is driven by wrk (Debian's package; ``make bench-serve`` installs it when it
is missing), a C load generator in a process of its own, each request for a random ml-100k
user: a Python client here cost as much CPU as the server and capped even the echo deployment
at 73 requests/s. Final line: the JSON summary,
with overhead_vs_echo = (serve_p50_ms_c1 - inproc_p50_ms) / echo_p50_ms and concurrency_gain =
rps_c16 / inproc_rps. Targets: overhead_vs_echo <= 1.25, concurrency_gain >= 3,
serve_p99_ms_c16 <= 80, failed_during_swap == 0, impressions_lost == 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from rich.console import Console

from deploy.local_kafka import LocalKafka, free_port
from learner.registry import ModelRegistry
from learner.settings import BackboneSettings
from schemas.page_api import PageRequest, PageResponse
from serving.page_service import PageService
from serving.served_versions import LearnedVersion, PagePlan, load_served_version
from serving.settings import ServingSettings
from serving.store_context import StoreContext, StoreReader
from streams.ingest.dataset_import import DatasetReader, ImportedRating
from streams.ingest.topics import create_topic
from streams.settings import StreamSettings
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from tests.serving_fixtures import publish_version
from tests.test_impression_log import request_ids

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"
TOPIC = "events"
K = 10
console = Console(stderr=True, soft_wrap=True)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by the nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_dataset(store: EventStore, limit: int | None) -> tuple[list[str], list[str], list[str]]:
    """ml-100k into the store as one ledger batch; (users, items, categories)."""
    reader = DatasetReader("movielens", DATA)
    batch = LedgerBatch()
    rows = [r for r in reader.ratings() if isinstance(r, ImportedRating)][:limit]
    for offset, item in enumerate(reader.catalogue.values()):
        batch.add_catalogue_item(item, SourceRecord("catalogue", 0, offset, None, None))
    for offset, row in enumerate(rows):
        batch.add_accepted(row.event, SourceRecord(TOPIC, 0, offset, None, None))
    store.write_batch(batch, "bench")
    users = sorted({r.event.user_id for r in rows})
    items = sorted(reader.catalogue)
    return users, items, sorted({c.category for c in reader.catalogue.values()})


def measure_inproc(
    version: LearnedVersion, context: StoreContext, users: list[str], n: int
) -> list[float]:
    rng = random.Random(0)
    latencies = []
    for _ in range(n):
        user = context.user(rng.choice(users))
        plan = PagePlan(rng.choice(users), user.positives, frozenset(user.bought), K)
        start = time.perf_counter()
        (page,) = version.pages([plan])
        latencies.append(time.perf_counter() - start)
        assert isinstance(page, list) and len(page) == K
    return latencies


# Each wrk thread writes the request id of every page it got to a file of its own.
WRK_SCRIPT = """
local users = {%s}
local path = "%s"
local ids_prefix = "%s"
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("n", counter)
end
init = function(args)
  math.randomseed(n * 7919)
  ids = io.open(ids_prefix .. n .. ".txt", "w")
end
request = function()
  local body = string.format('{"user_id": "%%s", "k": %d}', users[math.random(#users)])
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
response = function(status, headers, body)
  local id = body:match('"request_id":"(%%x+)"')
  if id then
    ids:write(id, "\\n")
    ids:flush()
  end
end
"""


@dataclass
class Load:
    """What wrk measured in one phase."""

    requests: int
    request_ids: list[str] = field(repr=False)  # of the pages answered
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int  # non-2xx answers and socket errors (timeouts included)


def wrk_figure(output: str, pattern: str) -> float:
    found = re.search(pattern, output)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{output}")
    value, unit = float(found.group(1)), found.group(2) if found.lastindex == 2 else ""
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "": 1.0}[unit]


def measure_service(streams: StreamSettings, work: Path, users: list[str], n: int) -> list[float]:
    """The serving logic in this process, one request at a time: what ours adds to generation."""
    service = PageService(ServingSettings(spool_dir=work / "spool-inproc"), streams)
    service.refresh_context()
    service.refresh_versions()
    rng = random.Random(3)
    latencies = []
    try:
        for n_request in range(n + 20):
            request = PageRequest(user_id=rng.choice(users), k=K)
            start = time.perf_counter()
            (answer,) = service.pages([request])
            if n_request >= 20:  # the first 20 warm up
                latencies.append(time.perf_counter() - start)
            assert isinstance(answer, PageResponse)
    finally:
        service.close()
    return latencies


def run_wrk(
    url: str, path: str, users: list[str], clients: int, seconds: float, work: Path
) -> Load:
    script = work / f"wrk-{clients}.lua"
    quoted = ", ".join(f'"{u}"' for u in users)
    ids_dir = Path(tempfile.mkdtemp(dir=work))
    script.write_text(WRK_SCRIPT % (quoted, path, ids_dir / "ids-", K))
    out = subprocess.run(
        ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds:.0f}s", "-T30s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(
        requests=int(wrk_figure(out, r"(\d+) requests in")),
        request_ids=[i for f in ids_dir.glob("ids-*.txt") for i in f.read_text().split()],
        rps=wrk_figure(out, r"Requests/sec:\s+([\d.]+)"),
        p50_ms=wrk_figure(out, r"50%\s+([\d.]+)(us|ms|s)"),
        p99_ms=wrk_figure(out, r"99%\s+([\d.]+)(us|ms|s)"),
        failed=(sum(int(g) for g in errors.groups()) if errors else 0)
        + (int(non_2xx.group(1)) if non_2xx else 0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a slice of the data, short phases")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if shutil.which("wrk") is None:
        raise SystemExit("bench-serve needs wrk (Debian: apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    broker = LocalKafka(work / "kafka")
    try:
        summary = measure(args.quick, work, broker.start().bootstrap)
    finally:  # nothing of the run outlives it, even when it fails
        import ray

        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


def measure(quick: bool, work: Path, bootstrap: str) -> dict[str, object]:
    n_inproc, seconds = (50, 4.0) if quick else (300, 20.0)
    create_topic(bootstrap, TOPIC, 4)
    store = EventStore(work / "store")
    store.init()
    users, items, categories = write_dataset(store, 5000 if quick else None)
    registry = ModelRegistry.for_store(store.root)
    publish_version(registry, users, items, categories, BackboneSettings())
    console.print(f"store: {len(users)} users, {len(items)} items; version v1 published")

    context = StoreContext()
    StoreReader(store.root, context).refresh()
    version = load_served_version(registry, store.root, "v1")
    assert isinstance(version, LearnedVersion)
    measure_inproc(version, context, users, 20)  # warm-up
    inproc = measure_inproc(version, context, users, n_inproc)
    inproc_p50 = statistics.median(inproc)
    inproc_rps = 1 / statistics.mean(inproc)
    console.print(f"inproc: p50 {inproc_p50 * 1e3:.2f} ms, {inproc_rps:.1f} pages/s")
    del version
    streams = StreamSettings(kafka_bootstrap=bootstrap, events_topic=TOPIC, store_dir=store.root)
    service_p50 = statistics.median(measure_service(streams, work, users, n_inproc))
    console.print(
        f"service (routing, context, plan, generation, impression): {service_p50 * 1e3:.2f} ms"
    )

    import ray
    from fastapi import FastAPI
    from ray import serve

    from serving.app import PageDeployment

    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    echo_api = FastAPI()

    @serve.deployment(max_ongoing_requests=256, logging_config={"enable_access_log": False})
    @serve.ingress(echo_api)
    class Echo:
        @echo_api.post("/")
        async def echo(self, body: dict) -> dict:  # type: ignore[type-arg]
            return body

    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    run_wrk(base, "/echo/", users, 1, 2, work)  # warm-up
    echo = run_wrk(base, "/echo/", users, 1, seconds / 2, work)
    echo16 = run_wrk(base, "/echo/", users, 16, seconds / 2, work)
    console.print(f"echo: {echo}\necho c16: {echo16}")
    serve.delete("echo")  # its replica holds a CPU the page replicas may need

    serving = ServingSettings(port=port, spool_dir=work / "spool", refresh_s=0.5)

    def deploy(settings: ServingSettings) -> None:
        app = PageDeployment.options(num_replicas=settings.replicas).bind(
            settings.model_dump(mode="json"), streams.model_dump(mode="json")
        )
        serve.run(app, name="pagellm", route_prefix="/")

    deploy(serving)
    warm = run_wrk(base, "/v1/page", users, 1, 2, work)
    c1 = run_wrk(base, "/v1/page", users, 1, seconds, work)
    console.print(f"serve c1: {c1}")

    def swap() -> None:
        time.sleep(seconds / 2)
        publish_version(registry, users, items, categories, BackboneSettings(), seed=1)

    swapper = threading.Thread(target=swap)
    swapper.start()
    c16 = run_wrk(base, "/v1/page", users, 16, seconds, work)
    swapper.join()
    after_swap = httpx.post(f"{base}/v1/page", json={"user_id": users[0]}, timeout=30).json()
    console.print(f"serve c16: {c16}; after it, pages come from {after_swap['model_version']}")
    # Every page answered must be on the topic once; wrk may stop with requests in flight,
    # whose pages were served (and logged) but never counted: those are not losses.
    answered = [*warm.request_ids, *c1.request_ids, *c16.request_ids, after_swap["request_id"]]

    def pending() -> int:
        return int(httpx.get(f"{base}/v1/health").json()["impressions"]["pending"])

    deadline = time.monotonic() + 120
    while pending() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = request_ids(bootstrap, TOPIC, len(answered))
    impressions_lost = sum(1 for r in answered if seen[r] == 0)
    impressions_doubled = sum(n - 1 for n in seen.values())

    deploy(serving.model_copy(update={"max_batch_size": 1}))
    unbatched = run_wrk(base, "/v1/page", users, 16, seconds / 2, work)
    console.print(f"serve c16 unbatched: {unbatched}")
    return {
        "inproc_p50_ms": round(inproc_p50 * 1e3, 2),
        "inproc_rps": round(inproc_rps, 1),
        "echo_p50_ms": round(echo.p50_ms, 2),
        "echo_rps_c16": round(echo16.rps, 1),
        "serve_p50_ms_c1": round(c1.p50_ms, 2),
        "serve_p99_ms_c1": round(c1.p99_ms, 2),
        "serve_p50_ms_c16": round(c16.p50_ms, 2),
        "serve_p99_ms_c16": round(c16.p99_ms, 2),
        "rps_c16": round(c16.rps, 1),
        "rps_c16_unbatched": round(unbatched.rps, 1),
        "service_p50_ms": round(service_p50 * 1e3, 2),
        "own_overhead_vs_echo": round((service_p50 - inproc_p50) * 1e3 / echo.p50_ms, 3),
        "overhead_vs_echo": round((c1.p50_ms - inproc_p50 * 1e3) / echo.p50_ms, 3),
        "concurrency_gain": round(c16.rps / inproc_rps, 3),
        "failed_during_swap": c16.failed,
        "served_after_swap": after_swap["model_version"],
        "impressions_lost": impressions_lost,
        "impressions_doubled": impressions_doubled,
    }


if __name__ == "__main__":
    main()
