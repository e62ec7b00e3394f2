"""The serving logic on a real store and registry, without Ray: valid pages, cold start, version
swaps, experiments, popularity versions, scores, and every page's impression on Kafka."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from abtest.assignment import assign
from abtest.experiment import Experiment, Variant
from abtest.registry import ExperimentRegistry
from learner.registry import ModelRegistry
from learner.vocabulary import Vocabulary
from schemas import Purchase
from schemas.page_api import PageRequest, PageResponse, ScoreRequest
from serving.page_service import RETRY_FAILED_EVERY, PageService, RequestRefused
from serving.popularity import load_ranking, popularity_page, register_popularity_version
from serving.served_versions import PAGE_END_TOKENS, PROMPT_FRAME_TOKENS
from serving.settings import ServingSettings
from streams.settings import StreamSettings
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from tests.conftest import read_topic
from tests.serving_fixtures import publish_version
from tests.test_retrain import T0, write_ratings

pytestmark = pytest.mark.kafka  # every test's service logs impressions to the broker

USERS = [f"u{u}" for u in range(30)]  # the version knows u0-u29; the store has u0-u39
ITEMS = [f"i{i}" for i in range(60)]
CATEGORIES = [f"c{c}" for c in range(4)]


def write_purchase(store: EventStore, user: str, item: str, offset: int) -> None:
    batch = LedgerBatch()
    event = Purchase(
        type="purchase",
        event_id=f"p-{user}-{item}",
        user_id=user,
        session_id="s",
        ts=T0 + timedelta(days=1),
        item_id=item,
        quantity=1,
        unit_price=Decimal("9.99"),
        currency="EUR",
    )
    batch.add_accepted(event, SourceRecord("events", 0, offset, None, None))
    store.write_batch(batch, "w")


@pytest.fixture
def service(settings: StreamSettings, tmp_path: Path) -> Iterator[PageService]:
    store = EventStore(settings.store_dir)
    offset = write_ratings(store, range(40), range(60), 0)
    write_purchase(store, "u1", "i58", offset)
    publish_version(ModelRegistry.for_store(store.root), USERS, ITEMS, CATEGORIES)
    serving = ServingSettings(spool_dir=tmp_path / "spool")
    service = PageService(serving, settings)
    service.refresh_context()
    service.refresh_versions()
    yield service
    service.close()


def page(service: PageService, user: str, **kw: object) -> PageResponse:
    (answer,) = service.pages([PageRequest(user_id=user, **kw)])  # type: ignore[arg-type]
    assert isinstance(answer, PageResponse), answer
    return answer


def item_ids(answer: PageResponse) -> list[str]:
    return [slot.item_id for slot in answer.items]


def test_a_page_holds_k_distinct_catalogue_items_none_liked_bought_or_excluded(
    service: PageService,
) -> None:
    for user, k in (("u1", 10), ("u2", 1), ("u3", 30), ("u4", 50)):
        exclude = ["i0", "i7", "i13"]
        answer = page(service, user, k=k, exclude=exclude)
        items = item_ids(answer)
        context = service.context.user(user)
        assert len(items) == k and len(set(items)) == k
        assert set(items) <= set(ITEMS)
        assert not set(items) & (set(exclude) | context.bought | set(context.positives))
        assert [s.position for s in answer.items] == list(range(1, k + 1))
        assert (answer.model_version, answer.fallback_reason) == ("v1", None)
    assert "i58" in service.context.user("u1").bought


def test_no_page_holds_a_liked_item_even_where_the_prompt_has_no_room(
    service: PageService,
) -> None:
    # Near the largest k the model writes, its context leaves the prompt no room for every
    # liked item: the policy banned the prompt's only, and its pages held the others.
    served = service.table.live["v1"]
    most = served.context_tokens - PROMPT_FRAME_TOKENS - PAGE_END_TOKENS
    context = service.context.user("u3")
    liked = set(context.positives)
    allowed = set(ITEMS) - liked - context.bought
    # The policy writes a page of every allowed item, with room in its prompt for fewer liked.
    assert len(allowed) <= most and most - len(allowed) < len(liked)
    answer = page(service, "u3", k=len(allowed))
    assert answer.fallback_reason is None and set(item_ids(answer)) == allowed
    (refused,) = service.pages([PageRequest(user_id="u3", k=len(allowed) + 1)])
    assert isinstance(refused, RequestRefused), refused
    assert f"only {len(allowed)}" in refused.detail


def test_a_user_unknown_to_the_version_gets_the_popularity_fallback_saying_so(
    service: PageService,
) -> None:
    store = EventStore(service.streams.store_dir)
    write_purchase(store, "newbie", "i2", offset=10_000)  # i2 is of category c2
    assert service.refresh_context() == 1
    answer = page(service, "newbie", k=5)
    assert answer.fallback_reason == "user 'newbie' is unknown to v1 (cold start)"
    category_of = {i: c.category for i, c in service.context.catalogue.items()}
    in_c2 = [i for i in service.context.popular_items() if category_of[i] == "c2" and i != "i2"]
    assert item_ids(answer) == in_c2[:5]

    stranger = page(service, "nobody-yet", k=5)
    assert "unknown to v1" in (stranger.fallback_reason or "")
    assert item_ids(stranger) == service.context.popular_items()[:5]


def test_a_promoted_version_serves_once_loaded_and_the_retired_one_is_unloaded(
    service: PageService,
) -> None:
    registry = service.registry
    publish_version(registry, USERS, ITEMS, CATEGORIES, seed=1)  # v2, promoted: v1 retired
    assert page(service, "u1").model_version == "v1"  # not loaded yet: v1 goes on serving
    table = service.refresh_versions()
    assert (table.production, sorted(table.live)) == ("v2", ["v2"])
    assert page(service, "u1").model_version == "v2"
    assert service.versions().versions[0].status == "production"


def running_experiment(service: PageService, name: str, **versions: str) -> Experiment:
    """An experiment started a minute ago: variant name -> the version it serves, control first."""
    variants = tuple(Variant(name=n, weight=1, model_version=v) for n, v in versions.items())
    return ExperimentRegistry(service.streams.store_dir).create(
        Experiment(name=name, variants=variants, start=datetime.now(UTC) - timedelta(minutes=1))
    )


def register_popularity(service: PageService, work: Path) -> str:
    ranking = service.context.popular_items()
    category_of = {i: c.category for i, c in service.context.catalogue.items()}
    popular = register_popularity_version(service.registry, ranking, category_of, work)
    assert popular.kind == "popularity"
    return popular.version


def test_an_experiment_routes_its_users_to_a_popularity_version(
    service: PageService, tmp_path: Path
) -> None:
    assert register_popularity(service, tmp_path / "w") == "v2"
    exp = running_experiment(service, "pop-vs-llm", control="v1", popularity="v2")
    service.refresh_versions()
    frozen, _ = load_ranking(service.registry.model_dir("v2") / "popularity")
    for user in USERS:
        answer = page(service, user, k=5)
        variant = assign(exp, user)
        assert (answer.experiment, answer.variant) == ("pop-vs-llm", variant)
        assert answer.model_version == {"control": "v1", "popularity": "v2"}[variant]  # type: ignore[index]
        if variant == "popularity":
            context = service.context.user(user)
            banned = context.bought | set(context.positives)
            assert item_ids(answer) == popularity_page(frozen, 5, banned)
    assert {v.version: v.serves for v in service.versions().versions} == {
        "v1": ["production", "pop-vs-llm/control"],
        "v2": ["pop-vs-llm/popularity"],
    }


def test_an_item_deleted_from_the_catalogue_is_on_no_page(
    service: PageService, tmp_path: Path
) -> None:
    assert register_popularity(service, tmp_path / "w") == "v2"
    running_experiment(service, "pop-vs-llm", control="v1", popularity="v2")
    service.refresh_versions()
    # The items each path would put first for a user, before they go.
    first = {item_ids(page(service, u, k=3))[0] for u in USERS[:10]}
    first.add(service.context.popular_items()[0])  # the fallback's first (and the frozen one's)
    batch = LedgerBatch()
    for n, item in enumerate(sorted(first)):
        batch.add_catalogue_deletion(item, SourceRecord("catalogue", 0, 10_000 + n, None, None))
    EventStore(service.streams.store_dir).write_batch(batch, "w")
    assert service.refresh_context() == 0  # no events: deletions only
    assert not first & set(service.context.popular_items())
    variants = set()
    unknown_to_v1 = [f"u{n}" for n in range(30, 40)]
    for user in USERS + unknown_to_v1:  # the learned, popularity and fallback paths
        answer = page(service, user, k=10)
        assert not first & set(item_ids(answer)), (user, answer)
        variants.add((answer.variant, answer.fallback_reason is not None))
    assert {("control", False), ("popularity", False), ("control", True)} <= variants


def test_a_variant_naming_production_serves_each_promoted_version_in_turn(
    service: PageService, tmp_path: Path
) -> None:
    assert register_popularity(service, tmp_path / "w") == "v2"
    exp = running_experiment(service, "pop-vs-llm", popularity="v2", pagellm="production")
    treated = [u for u in USERS if assign(exp, u) == "pagellm"]
    service.refresh_versions()
    assert {page(service, u).model_version for u in treated} == {"v1"}
    publish_version(service.registry, USERS, ITEMS, CATEGORIES, seed=1)  # v3, promoted
    service.refresh_versions()
    answers = [page(service, u) for u in treated]
    assert {(a.model_version, a.variant) for a in answers} == {("v3", "pagellm")}
    assert sorted(service.table.live) == ["v2", "v3"]


def test_a_variant_whose_version_cannot_load_gets_production_until_it_can(
    service: PageService,
) -> None:
    running_experiment(service, "early", control="v1", treatment="v2")  # v2: not published yet
    table = service.refresh_versions()
    assert "v2" in table.failed and "no 'v2'" in table.failed["v2"]
    answers = [page(service, u) for u in USERS]
    moved = [a for a in answers if a.experiment is None]
    # What failed stays in /v1/versions: the error names a path of the server's store.
    assert moved and {a.fallback_reason for a in moved} == {
        "version v2 of early/treatment is not available (failed to load); production served"
    }
    assert all(a.model_version == "v1" for a in answers)
    assert service.health().status == "degraded"

    publish_version(service.registry, USERS, ITEMS, CATEGORIES, seed=2, promote=False)
    now = datetime.now(UTC)
    assert "v2" in service.refresh_versions(now).failed  # not retried at every refresh
    later = service.refresh_versions(now + RETRY_FAILED_EVERY + timedelta(seconds=1))
    assert "v2" in later.live and not later.failed
    treated = [a for a in (page(service, u) for u in USERS) if a.variant == "treatment"]
    assert treated and {a.model_version for a in treated} == {"v2"}


def test_without_a_production_version_requests_are_refused_with_503(
    settings: StreamSettings, tmp_path: Path
) -> None:
    service = PageService(ServingSettings(spool_dir=tmp_path / "spool"), settings)
    try:
        service.refresh_versions()
        (answer,) = service.pages([PageRequest(user_id="u1")])
    finally:
        service.close()
    assert isinstance(answer, RequestRefused) and answer.status == 503
    assert "no production version" in answer.detail


def test_scores_are_the_reward_models_and_unknown_items_are_refused(service: PageService) -> None:
    scored = service.score(ScoreRequest(user_id="u1", pages=[["i1", "i2"], ["i3"]]))
    assert scored.model_version == "v1" and len(scored.scores) == 2
    assert scored.scores[0] != scored.scores[1]
    with pytest.raises(RequestRefused, match=r"pages\.1: item 'zz' is unknown to v1"):
        service.score(ScoreRequest(user_id="u1", pages=[["i1"], ["zz"]]))


def test_every_page_is_an_impression_on_kafka(
    service: PageService, settings: StreamSettings
) -> None:
    answers = [page(service, f"u{n % 40}", k=3, session_id=f"s{n}") for n in range(25)]
    records = read_topic(settings, settings.events_topic, len(answers))
    events = {json.loads(r.value)["request_id"]: json.loads(r.value) for r in records}
    assert len(records) == len(answers) == len(events)
    for n, answer in enumerate(answers):
        event = events[answer.request_id]
        assert event["type"] == "impression" and event["event_id"] == f"imp-{answer.request_id}"
        assert event["session_id"] == f"s{n}" and event["model_version"] == "v1"
        assert [s["item_id"] for s in event["items"]] == item_ids(answer)


def test_vocabulary_of_the_served_version_is_what_the_page_draws_from(service: PageService) -> None:
    vocab = Vocabulary.load(service.registry.model_dir("v1") / "vocabulary")
    assert set(item_ids(page(service, "u5", k=40))) <= set(vocab.items)
    assert uuid.UUID(page(service, "u5").request_id)
