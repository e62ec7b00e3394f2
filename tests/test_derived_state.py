"""Incremental maintenance: after a refresh, the state equals a full rebuild (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import CatalogueItem, Click, Impression, PageSlot, Rating
from streams.derive.derived_state import DeriveConfig, DerivedState, ItemStats

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATALOGUE = {f"i{n}": CatalogueItem(item_id=f"i{n}", category=f"c{n % 4}") for n in range(30)}
CONFIG = DeriveConfig(prompt_length=3, list_length=5, seed=5)


def rate(item: str, rating: int, minute: int, user: str = "a") -> Rating:
    """``user``'s rating of ``item``, ``minute`` minutes after T0."""
    return Rating(
        type="rating",
        event_id=f"{user}-{item}-{minute}",
        user_id=user,
        session_id="s",
        ts=T0 + timedelta(minutes=minute),
        item_id=item,
        rating=rating,
    )


@st.composite
def user_histories(draw: st.DrawFn) -> dict[str, list]:
    """Per user, an ordered history of ratings and impression/click pairs."""
    histories: dict[str, list] = {}
    for u in range(draw(st.integers(1, 6))):
        user = f"u{u}"
        events: list = []
        for k in range(draw(st.integers(1, 25))):
            ts = T0 + timedelta(minutes=k)
            common = {"user_id": user, "session_id": "s", "ts": ts}
            if draw(st.booleans()):
                events.append(
                    Rating(
                        type="rating",
                        event_id=f"{user}-r{k}",
                        item_id=draw(st.sampled_from(sorted(CATALOGUE))),
                        rating=draw(st.integers(1, 5)),
                        **common,
                    )
                )
            else:
                page = draw(
                    st.lists(
                        st.sampled_from(sorted(CATALOGUE)), min_size=2, max_size=5, unique=True
                    )
                )
                request = f"{user}-q{k}"
                events.append(
                    Impression(
                        type="impression",
                        event_id=f"{user}-i{k}",
                        request_id=request,
                        items=[PageSlot(item_id=i, position=p) for p, i in enumerate(page, 1)],
                        model_version="v1",
                        **common,
                    )
                )
                position = draw(st.integers(1, len(page)))
                events.append(
                    Click(
                        type="click",
                        event_id=f"{user}-c{k}",
                        request_id=request,
                        item_id=page[position - 1],
                        position=position,
                        **common,
                    )
                )
        histories[user] = events
    return histories


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[list, list[list]]:
    """All events in some cross-user order (each user's own order kept), cut into batches."""
    histories = draw(user_histories())
    cursors = {u: 0 for u in histories}
    stream = []
    while any(cursors[u] < len(h) for u, h in histories.items()):
        user = draw(st.sampled_from(sorted(u for u in histories if cursors[u] < len(histories[u]))))
        stream.append(histories[user][cursors[user]])
        cursors[user] += 1
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, batches


def training_view(state: DerivedState) -> dict[str, tuple[object, ...]]:
    """Per user: (prompt, golden list, pairs, skipped families): what the learner sees."""
    return {
        u: (d.prompt, d.golden, tuple(d.pairs), tuple(sorted(d.skipped.items())))
        for u, d in state.users.items()
    }


@settings(max_examples=150, deadline=None)
@given(case=interleavings())
def test_incremental_after_refresh_equals_full_rebuild(case: tuple[list, list[list]]) -> None:
    stream, batches = case
    incremental = DerivedState(CATALOGUE, CONFIG)
    for batch in batches:
        incremental.apply(batch)
    incremental.refresh()
    full = DerivedState.rebuild(CATALOGUE, CONFIG, stream)
    assert training_view(incremental) == training_view(full)
    assert {i: (s.count, s.rating_sum) for i, s in incremental.items.items() if s.count} == {
        i: (s.count, s.rating_sum) for i, s in full.items.items() if s.count
    }
    assert incremental.stale_users() == []


def test_an_event_touches_only_its_user() -> None:
    state = DerivedState(CATALOGUE, CONFIG)
    state.apply([rate(f"i{n}", 5, n, "a") for n in range(8)])
    state.apply([rate(f"i{n}", 4, n, "b") for n in range(8)])
    before = state.users["a"].golden
    assert state.apply([rate("i9", 5, 20, "b")]) == {"b"}
    assert state.users["a"].golden is before  # untouched, possibly stale
    assert state.stale_users() == ["a"]  # b's ratings moved s_i of a's candidates
    assert state.refresh() == ["a"] and state.stale_users() == []


def test_item_stats_follow_changed_ratings() -> None:
    state = DerivedState(CATALOGUE, CONFIG)
    first = Rating(
        type="rating", event_id="e1", user_id="a", session_id="s", ts=T0, item_id="i1", rating=2
    )
    again = first.model_copy(update={"event_id": "e2", "ts": T0 + timedelta(1), "rating": 5})
    state.apply([first])
    assert state.items["i1"] == ItemStats(count=1, rating_sum=2)
    state.apply([again])  # the latest explicit rating replaces the first one
    assert state.items["i1"] == ItemStats(count=1, rating_sum=5)
    assert state.popularity("i1") == 5.0


@settings(max_examples=200, deadline=None)
@given(case=interleavings())
def test_pairs_kept_from_an_earlier_batch_equal_those_built_afresh(
    case: tuple[list, list[list]],
) -> None:
    # One user alone: nobody else moves s_i, so each batch's state is exact without a refresh,
    # and a pair a batch kept (its golden list unchanged) must be the one a rebuild makes.
    stream, batches = case
    user = stream[0].user_id if stream else "u0"
    mine = [[e for e in batch if e.user_id == user] for batch in batches]
    state = DerivedState(CATALOGUE, CONFIG)
    for n, batch in enumerate(mine):
        state.apply(batch)
        so_far = [e for earlier in mine[: n + 1] for e in earlier]
        assert training_view(state) == training_view(
            DerivedState.rebuild(CATALOGUE, CONFIG, so_far)
        )


def test_an_event_that_leaves_the_lists_as_they_were_keeps_their_models() -> None:
    # a rates i0-i7 (5) and dislikes i20, i21; with L = 3 and K = 5 the list is i0-i4 (or
    # their cap-balanced order). A neutral 3 changes no list and no disliked slice: the prompt,
    # the golden list and every pair are the same objects; a new dislike rebuilds only np.
    state = DerivedState(CATALOGUE, CONFIG)
    state.apply([rate(f"i{n}", 5, n) for n in range(8)] + [rate("i20", 1, 9), rate("i21", 2, 10)])
    data = state.users["a"]
    prompt, golden, pairs = data.prompt, data.golden, {p.family: p for p in data.pairs}
    assert set(pairs) == {"np", "rk", "d", "rd"}

    state.apply([rate("i22", 3, 11)])
    assert data.prompt is prompt and data.golden is golden
    assert all(p is pairs[p.family] for p in data.pairs) and len(data.pairs) == 4

    state.apply([rate("i23", 1, 12)])  # lowest rating, most recent: first in np's slice
    kept = {p.family: p for p in data.pairs}
    assert data.golden is golden and kept["np"] is not pairs["np"]
    assert kept["np"].rejected[0] == "i23"
    assert all(kept[f] is pairs[f] for f in ("rk", "d", "rd"))


def test_a_d_pair_drawn_at_random_stands_until_an_item_it_drew_is_rated() -> None:
    # a likes i0-i7: prompt i5-i7, list i0-i4, dominant category c0 (i0, i4); d replaces i1-i3
    # by three unseen items of c0's 8, drawn at random (6 unseen). Rating another c0 item
    # (a 3, which moves no list) leaves the draws as they were; rating a drawn item changes them.
    state = DerivedState(CATALOGUE, CONFIG)
    state.apply([rate(f"i{n}", 5, n) for n in range(8)])
    data = state.users["a"]
    golden, pair = data.golden, next(p for p in data.pairs if p.family == "d")
    assert golden is not None and golden.items == ("i0", "i1", "i2", "i3", "i4")
    drawn = [r for g, r in zip(golden.items, pair.rejected, strict=True) if g != r]
    undrawn = sorted({f"i{n}" for n in range(8, 30, 4)} - set(drawn))

    def rebuilt(events: list) -> DerivedState:
        return DerivedState.rebuild(CATALOGUE, CONFIG, events)

    events = [rate(f"i{n}", 5, n) for n in range(8)] + [rate(undrawn[0], 3, 8)]
    state.apply(events[-1:])
    assert data.golden is golden and next(p for p in data.pairs if p.family == "d") is pair
    assert training_view(state) == training_view(rebuilt(events))

    events.append(rate(drawn[0], 3, 9))
    state.apply(events[-1:])
    again = next(p for p in data.pairs if p.family == "d")
    assert data.golden is golden and again is not pair and drawn[0] not in again.rejected
    assert training_view(state) == training_view(rebuilt(events))


def test_a_category_change_is_counted_again_at_the_next_refresh() -> None:
    # a rated i1 (c1) and i2 (c2); i1 moves to c2. An event of a's after the change rebuilds
    # a's lists with the new category, but a's count of rated items per category still says
    # c1: the refresh recounts it, and the state equals a rebuild on the new catalogue.
    events = [rate(f"i{n}", 5, n) for n in range(8)]
    state = DerivedState(CATALOGUE, CONFIG)
    state.apply(events)
    moved = CATALOGUE | {"i1": CatalogueItem(item_id="i1", category="c2")}
    state.update_catalogue(moved)
    events.append(rate("i9", 4, 9))
    state.apply(events[-1:])
    assert state.users["a"].history.rated_per_category["c1"] == 3  # i1, i5, i9: i1 as it was
    assert state.stale_users() == ["a"] and state.refresh() == ["a"]
    full = DerivedState.rebuild(moved, CONFIG, events)
    assert state.users["a"].history == full.users["a"].history
    assert training_view(state) == training_view(full)
