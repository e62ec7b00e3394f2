"""The HTTP API on real Ray Serve (a local Ray started by `pagellm serve start`) and a real
broker of this module's own: valid pages, 422s that name the field, cold start, routing by
assignment, a version swap and a broker restart under continuous traffic.

The tests run in file order and share one server; the broker restart comes last.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from abtest.assignment import assign
from abtest.experiment import Experiment, Variant
from abtest.registry import ExperimentRegistry
from deploy.local_kafka import BrokerState, LocalKafka
from learner.registry import ModelRegistry
from serving.popularity import register_popularity_version
from serving.server import read_state
from serving.store_context import StoreContext, StoreReader
from streams.ingest.topics import create_topic
from streams.store.event_store import EventStore
from tests.conftest import wait_for
from tests.serving_fixtures import publish_version
from tests.test_cli import pagellm
from tests.test_impression_log import request_ids
from tests.test_page_service import CATEGORIES, ITEMS, USERS
from tests.test_retrain import write_ratings

pytestmark = pytest.mark.kafka  # the module's own broker

TOPIC = "events"
BODY_TIMEOUT_S = 2.0  # short, so that a stalled body is cut off quickly here


@dataclass
class Server:
    url: str
    store: EventStore
    broker: LocalKafka
    state: BrokerState
    run_dir: Path

    def page(self, user: str, **body: object) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/page", json={"user_id": user, **body}, timeout=30)

    def live_versions(self) -> dict[str, list[str]]:
        found = httpx.get(f"{self.url}/v1/versions", timeout=10).json()["versions"]
        return {v["version"]: v["serves"] for v in found}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serving")
    broker = LocalKafka(root / "kafka")
    state = broker.start()
    create_topic(state.bootstrap, TOPIC, 4)
    store = EventStore(root / "store")
    store.init()
    write_ratings(store, range(40), range(60), 0)
    publish_version(ModelRegistry.for_store(store.root), USERS, ITEMS, CATEGORIES)
    common = ["--store", str(store.root), "--run-dir", str(root / "run")]
    started = pagellm(
        "serve", "start", "--port", "0", "--bootstrap", state.bootstrap, "--topic", TOPIC,
        *common, timeout_s=240, env={"PAGELLM_SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)},
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr.decode()[-3000:]
        server_state = read_state(root / "run")
        assert server_state is not None
        yield Server(server_state.url, store, broker, state, root / "run")
    finally:
        stopped = pagellm("serve", "stop", *common, timeout_s=120)
        broker.stop()
    assert stopped.returncode == 0, stopped.stderr.decode()[-2000:]
    assert read_state(root / "run") is None


def assert_valid(page: dict, k: int, banned: set[str]) -> list[str]:  # type: ignore[type-arg]
    items = [slot["item_id"] for slot in page["items"]]
    assert len(items) == k and len(set(items)) == k
    assert set(items) <= set(ITEMS) and not set(items) & banned
    assert [slot["position"] for slot in page["items"]] == list(range(1, k + 1))
    return items


def test_pages_over_http_are_valid_and_documented(server: Server) -> None:
    context = StoreContext()
    StoreReader(server.store.root, context).refresh()
    for n in range(10):
        user = f"u{n}"
        response = server.page(user, k=8, exclude=["i1", "i2"])
        assert response.status_code == 200, response.text
        body = response.json()
        positives = set(context.user(user).positives)
        assert_valid(body, 8, {"i1", "i2"} | positives)
        assert body["model_version"] == "v1" and "fallback_reason" not in body
    assert "/v1/page" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    curl = shutil.which("curl")
    if curl:  # as a user would, with no client of ours
        out = subprocess.run(
            [curl, "-s", "-X", "POST", f"{server.url}/v1/page",
             "-H", "content-type: application/json", "-d", '{"user_id": "u3", "k": 4}'],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        assert len(json.loads(out.stdout)["items"]) == 4


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"user_id": "u1", "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"user_id": "u1", "k": 101}, "k: Input should be less than or equal to 100"),
        ({"user_id": "u1", "k": "10"}, "k: Input should be a valid integer"),
        ({"user_id": "no spaces"}, "user_id: String should match pattern"),
        ({"k": 3}, "user_id: Field required"),
        ({"user_id": "u1", "exclude": "i1"}, "exclude: Input should be a valid list"),
        ({"user_id": "u1", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_get_422_naming_the_field(server: Server, body: dict, detail: str) -> None:  # type: ignore[type-arg]
    response = httpx.post(f"{server.url}/v1/page", json=body, timeout=30)
    assert response.status_code == 422
    assert detail in response.json()["detail"]


def test_malformed_and_oversized_bodies_are_refused(server: Server) -> None:
    broken = httpx.post(
        f"{server.url}/v1/page", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]
    # A duplicated key was served last-wins (k 3 here, its 200 never validated); invalid UTF-8
    # and deep nesting got a bare 400.
    for body, why in (
        (b'{"user_id": "u1", "k": 200, "k": 3}', "the key 'k' appears twice in one object"),
        (b'{"user_id": "u\xff1"}', "not UTF-8"),
        (b'{"user_id": "u1", "exclude": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    ):
        answer = httpx.post(f"{server.url}/v1/page", content=body,
                            headers={"content-type": "application/json"})  # fmt: skip
        assert answer.status_code == 422
        assert answer.json()["detail"] == f"body: not valid JSON ({why})"
    # An empty body said only "Field required", naming no field.
    empty = httpx.post(f"{server.url}/v1/page")
    assert (empty.status_code, empty.json()["detail"]) == (422, "body: Field required")
    # A JSON body sent as text was validated as a string: "Input should be a valid dictionary".
    as_text = httpx.post(f"{server.url}/v1/page", content=b'{"user_id": "u1"}',
                         headers={"content-type": "text/plain"})  # fmt: skip
    assert (as_text.status_code, as_text.json()["detail"]) == (
        415,
        "content-type: 'text/plain' is not accepted; send the body as application/json",
    )
    huge = {"user_id": "u1", "exclude": [f"item{n}" for n in range(20_000)]}
    assert httpx.post(f"{server.url}/v1/page", json=huge, timeout=30).status_code == 413
    score = httpx.post(f"{server.url}/v1/score", json={"user_id": "u1", "pages": [["i1", "i1"]]})
    assert score.status_code == 422 and "pages.0: an item appears twice" in score.json()["detail"]


def test_bodies_that_never_finish_are_cut_off_and_free_their_slots(server: Server) -> None:
    # Each held a replica slot for as long as its connection stayed open: 300 of them took
    # every page request down, while Ray's own health check still said success.
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    stalled = []
    for _ in range(8):
        sock = socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT_S + 30)
        sock.sendall(
            b"POST /v1/page HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        stalled.append(sock)
    for sock in stalled:
        with sock:
            answer = http.client.HTTPResponse(sock)
            answer.begin()  # blocks until the server answers (or the socket's timeout)
            detail = json.loads(answer.read())["detail"]
        assert answer.status == 408, detail
        assert detail == f"body: not received in full within {BODY_TIMEOUT_S:g} s"
    assert time.monotonic() - started >= BODY_TIMEOUT_S
    assert server.page("u1", k=3).status_code == 200


def test_a_cold_start_user_gets_a_fallback_page_saying_so(server: Server) -> None:
    response = server.page("stranger-1", k=6)
    assert response.status_code == 200
    body = response.json()
    assert_valid(body, 6, set())
    assert body["fallback_reason"] == "user 'stranger-1' is unknown to v1 (cold start)"


def test_scores_of_candidate_pages(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/v1/score", json={"user_id": "u2", "pages": [["i3", "i4"], ["i5"]]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "v1" and len(body["scores"]) == 2
    assert set(body["scores"][0]) == {"page_reward", "item_reward"}


def test_routing_follows_the_assignment_for_every_user(server: Server, tmp_path: Path) -> None:
    context = StoreContext()
    StoreReader(server.store.root, context).refresh()
    category_of = {i: c.category for i, c in context.catalogue.items()}
    registry = ModelRegistry.for_store(server.store.root)
    popular = register_popularity_version(registry, context.popular_items(), category_of, tmp_path)
    experiments = ExperimentRegistry(server.store.root)
    exp = experiments.create(
        Experiment(
            name="llm-vs-pop",
            variants=(
                Variant(name="control", weight=1, model_version="v1"),
                Variant(name="popularity", weight=1, model_version=popular.version),
            ),
            start=datetime.now(UTC) - timedelta(seconds=1),
        )
    )
    wait_for(lambda: popular.version in server.live_versions(), 60, "the popularity version live")
    versions = {"control": "v1", "popularity": popular.version}
    seen = Counter()
    for n in range(200):
        user = f"visitor{n}" if n % 2 else f"u{n % 30}"
        body = server.page(user, k=3).json()
        variant = assign(exp, user)
        assert (body["experiment"], body["variant"]) == ("llm-vs-pop", variant)
        assert body["model_version"] == versions[variant]  # type: ignore[index]
        seen[variant] += 1
    assert seen["control"] > 60 and seen["popularity"] > 60
    experiments.stop("llm-vs-pop")
    wait_for(lambda: popular.version not in server.live_versions(), 60, "the experiment ended")


@dataclass
class ClientLoop:
    """Clients asking for pages until stopped; every answer and failure is kept."""

    server: Server
    clients: int = 4
    answers: list[dict] = field(default_factory=list)  # type: ignore[type-arg]
    # (sent, received, model version) of each answer, in the order the answers came
    timed: list[tuple[float, float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in range(self.clients)]

    def _run(self, client: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic()
                try:
                    r = http.post(
                        f"{self.server.url}/v1/page", json={"user_id": f"u{(client + n) % 30}"}
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code == 200:
                    answer = r.json()
                    self.timed.append((sent, time.monotonic(), answer["model_version"]))
                    self.answers.append(answer)
                else:
                    self.failures.append(f"{r.status_code} {r.text}")

    def __enter__(self) -> ClientLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def test_status_shows_the_broker_its_partitions_the_versions_and_the_spool(
    server: Server,
) -> None:
    for user in USERS[:8]:
        assert server.page(user, k=3).status_code == 200
    flags = ["--store", str(server.store.root), "--bootstrap", server.state.bootstrap]
    flags += ["--run-dir", str(server.run_dir)]
    shown = pagellm("status", "--json", *flags, env={"PAGELLM_EVENTS_TOPIC": TOPIC})
    assert shown.returncode == 0, shown.stderr.decode()[-2000:]
    status = json.loads(shown.stdout)
    assert status["broker"] == "up" and status["problems"] == []
    partitions = status["ingest"]["partitions"]
    assert [p["partition"] for p in partitions] == [0, 1, 2, 3]
    assert sum(p["end"] for p in partitions) >= 8  # the impressions, on the topic
    assert all(p["committed"] is None and p["lag"] == p["end"] for p in partitions)  # no worker
    assert status["production"] in {v["version"] for v in status["serving"]["versions"]}
    assert status["serving"]["health"]["impressions"]["dropped"] == 0
    table = pagellm("status", *flags, env={"PAGELLM_EVENTS_TOPIC": TOPIC}).stdout.decode()
    assert "impression spool" in table and f"production {status['production']}" in table
    assert status["compaction"]["version"] == 0 and "compaction: never run;" in table
    down = pagellm("status", "--json", "--store", str(server.store.root), "--bootstrap",
                   "127.0.0.1:1", "--run-dir", str(server.run_dir))  # fmt: skip
    assert down.returncode == 1
    assert json.loads(down.stdout)["broker"].startswith("unreachable")


def test_a_version_swap_under_continuous_traffic_fails_no_request(server: Server) -> None:
    registry = ModelRegistry.for_store(server.store.root)
    with ClientLoop(server) as loop:
        wait_for(lambda: len(loop.answers) >= 20, 60, "pages before the swap")
        new = publish_version(registry, USERS, ITEMS, CATEGORIES, seed=3)  # promoted
        wait_for(lambda: any(a["model_version"] == new for a in loop.answers[-5:]), 90,
                 f"pages from {new}")  # fmt: skip
        after = len(loop.answers)
        wait_for(lambda: len(loop.answers) >= after + 20, 60, "pages after the swap")
    assert loop.failures == []
    versions = [a["model_version"] for a in loop.answers]
    assert versions[0] == "v1" and versions[-1] == new
    # Once a client has had a page of the new version, no request sent after that gets the old
    # one (a request sent before may still come back later: four clients ask at once).
    first_new = min(received for _, received, version in loop.timed if version == new)
    assert all(sent < first_new for sent, _, version in loop.timed if version != new)
    wait_for(lambda: list(server.live_versions()) == [new], 30, "the retired v1 unloaded")


def test_a_broker_restart_under_traffic_loses_and_doubles_no_impression(server: Server) -> None:
    def health() -> dict:  # type: ignore[type-arg]
        return httpx.get(f"{server.url}/v1/health", timeout=10).json()

    with ClientLoop(server, clients=2) as loop:
        wait_for(lambda: len(loop.answers) >= 20, 60, "pages before the broker stops")
        server.broker.stop()
        down = len(loop.answers)
        wait_for(lambda: len(loop.answers) >= down + 50, 60, "pages while the broker is down")
        wait_for(lambda: health()["impressions"]["pending"] > 0, 30, "impressions spooled")
        server.broker.resume(server.state)
        up = len(loop.answers)
        wait_for(lambda: len(loop.answers) >= up + 20, 60, "pages after the restart")
    assert loop.failures == []
    wait_for(lambda: health()["impressions"]["pending"] == 0, 90, "the spool delivered")
    assert health()["impressions"]["dropped"] == 0
    seen = request_ids(server.state.bootstrap, TOPIC, len(loop.answers))
    ours = [a["request_id"] for a in loop.answers]
    assert all(seen[r] == 1 for r in ours), [r for r in ours if seen[r] != 1][:5]
    assert max(seen.values()) == 1  # the earlier tests' impressions are there once too
