"""Range queries of the store (top groups, per-hour series, hours held) against a plain model.

The model sums rows per group with Python ints and sorts the way the API promises: by the order's
value descending, ties by the group's names ascending (code points). Both stores answer the same.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowagg.schema import Flow
from flowagg.store.base import NAME_FIELDS, HoursHeld, Query, QueryTooLarge, Summary
from flowagg.store.durable import DurableStore
from flowagg.store.memory import PartitionedStore
from tests.conftest import WAIT_TIMEOUT, Stall

INT64_MAX = 2**63 - 1


def model_groups(flows, query: Query) -> dict[tuple, list[int]]:
    fields = [NAME_FIELDS.index(f) for f in query.by]
    groups: dict[tuple, list[int]] = {}
    for f in flows:
        names = (f.src_app, f.dest_app, f.vpc_id)
        if not query.start <= f.hour <= query.end:
            continue
        if any(keep is not None and names[i] not in keep for i, keep in enumerate(query.filters)):
            continue
        sums = groups.setdefault(tuple(names[i] for i in fields), [0, 0])
        sums[0] += f.bytes_tx
        sums[1] += f.bytes_rx
    return groups


def rank(query: Query):
    def value(item):
        names, (tx, rx) = item
        amount = {"bytes": tx + rx, "bytes_tx": tx, "bytes_rx": rx}[query.order]
        return (-amount, names)

    return value


def model_top(flows, query: Query):
    groups = sorted(model_groups(flows, query).items(), key=rank(query))
    rows = [(*names, tx, rx) for names, (tx, rx) in groups[: query.limit]]
    rest = groups[query.limit :]
    other = Summary(len(rest), sum(s[0] for _, s in rest), sum(s[1] for _, s in rest))
    total = Summary(len(groups), sum(s[0] for _, s in groups), sum(s[1] for _, s in groups))
    return rows, other, total


@pytest.fixture(params=["memory", "durable"])
def make_store(request, tmp_path):
    stores = []

    def make(**options):
        if request.param == "memory":
            store = PartitionedStore(partitions=3, **options)
        else:
            store = DurableStore(tmp_path / f"data-{len(stores)}", partitions=3, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        assert store.close(WAIT_TIMEOUT)


NAMES = st.sampled_from(["a", "b", "é", "a\x00", "z", "ab", "B"])
FLOWS = st.lists(
    st.builds(
        Flow,
        NAMES,
        NAMES,
        st.sampled_from(["v1", "v2"]),
        st.one_of(st.integers(0, 100), st.just(INT64_MAX)),
        st.one_of(st.integers(0, 100), st.just(INT64_MAX)),
        st.integers(0, 7),
    ),
    max_size=80,
)
BY = st.lists(st.sampled_from(NAME_FIELDS), min_size=1, max_size=3, unique=True).map(tuple)
FILTER = st.one_of(st.none(), st.lists(NAMES, min_size=1, max_size=2).map(tuple))


@st.composite
def queries(draw):
    start = draw(st.integers(0, 8))
    return Query(
        start=start,
        end=draw(st.integers(start, 9)),
        by=draw(BY),
        filters=(draw(FILTER), draw(FILTER), draw(st.one_of(st.none(), st.just(("v1",))))),
        order=draw(st.sampled_from(["bytes", "bytes_tx", "bytes_rx"])),
        limit=draw(st.integers(1, 6)),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flows=FLOWS, query=queries())
def test_top_and_series_agree_with_the_model(make_store, flows, query):
    store = make_store()
    store.ingest(flows)
    top = store.top(query)
    rows, other, total = model_top(flows, query)
    assert (top.rows, top.other, top.total) == (rows, other, total)

    series = store.series(query)
    assert series.groups == [row[: len(query.by)] for row in rows]
    assert [h.hour for h in series.hours] == list(query.hours)
    for h in series.hours:
        one = Query(h.hour, h.hour, query.by, query.filters, query.order, 10**6)
        groups = model_groups(flows, one)
        assert h.values == [tuple(groups.get(names, (0, 0))) for names in series.groups]
        rest = [s for names, s in groups.items() if names not in series.groups]
        assert h.other == (sum(s[0] for s in rest), sum(s[1] for s in rest))
    # The hours' values add up to the range's rows.
    for i, row in enumerate(rows):
        assert sum(h.values[i][0] for h in series.hours) == row[-2]
        assert sum(h.values[i][1] for h in series.hours) == row[-1]


def test_ties_are_broken_by_names_in_code_point_order(make_store):
    store = make_store()
    store.ingest([Flow(n, "d", "v", 5, 5, 1) for n in ["b", "é", "a", "B", "ab"]])
    top = store.top(Query(1, 1, by=("src_app",), limit=10))
    assert [row[0] for row in top.rows] == ["B", "a", "ab", "b", "é"]


def test_sums_are_exact_beyond_64_bits(make_store):
    store = make_store()
    store.ingest([Flow("a", "b", "v", INT64_MAX, INT64_MAX, h) for h in range(6) for _ in range(3)])
    top = store.top(Query(0, 5, by=("src_app",)))
    assert top.rows == [("a", 18 * INT64_MAX, 18 * INT64_MAX)]
    assert top.total == Summary(1, 18 * INT64_MAX, 18 * INT64_MAX)


def test_a_query_sees_every_batch_ingested_before_it(make_store):
    """The drainer of one partition is held inside its merge: a query over that hour waits for
    it rather than answer without the batch."""
    store = make_store()
    partition = store.partition_for(4)
    stall = Stall(partition)
    store.ingest([Flow("a", "b", "v", 1, 2, 4)])
    assert stall.entered.wait(WAIT_TIMEOUT)
    answered = threading.Event()
    result = []

    def query() -> None:
        result.append(store.top(Query(3, 5)))
        answered.set()

    reader = threading.Thread(target=query)
    reader.start()
    try:
        assert not answered.wait(0.2)  # still waiting for the merge
    finally:
        stall.release.set()
        reader.join(WAIT_TIMEOUT)
    assert result[0].rows == [("a", "b", "v", 1, 2)]


def test_a_query_over_too_many_key_hours_is_refused_before_any_scan(make_store):
    store = make_store(max_query_rows=10)
    store.ingest([Flow(f"s{k}", "d", "v", 1, 1, h) for h in range(3) for k in range(4)])
    assert store.top(Query(0, 1)).total == Summary(4, 8, 8)  # 8 key-hours: allowed
    with pytest.raises(QueryTooLarge) as refused:
        store.top(Query(0, 2))
    assert (refused.value.rows, refused.value.limit) == (12, 10)
    assert "FLOWAGG_MAX_QUERY_ROWS=10" in str(refused.value)
    with pytest.raises(QueryTooLarge):
        store.series(Query(0, 2))


def test_empty_hours_have_zero_values_in_the_series(make_store):
    store = make_store()
    store.ingest([Flow("a", "b", "v", 3, 4, 2)])
    series = store.series(Query(0, 4, by=("src_app",)))
    assert series.groups == [("a",)]
    assert [(h.hour, h.values, h.other) for h in series.hours] == [
        (0, [(0, 0)], (0, 0)),
        (1, [(0, 0)], (0, 0)),
        (2, [(3, 4)], (0, 0)),
        (3, [(0, 0)], (0, 0)),
        (4, [(0, 0)], (0, 0)),
    ]


def test_hours_held(make_store):
    store = make_store()
    assert store.hours_held() == HoursHeld(0, None, None)
    store.ingest([Flow("a", "b", "v", 1, 1, h) for h in (7, 3, 12, 3)])
    assert store.hours_held() == HoursHeld(3, 3, 12)
