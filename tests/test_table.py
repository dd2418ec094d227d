"""The native hour tables (flowagg/store/table.c) against a model a reader can check by eye.

The model is the obvious dict of dicts with Python ints; hypothesis feeds both the same random
batches (names with unicode, NUL, quotes, backslashes and control characters, counters that sum
far beyond 2**64, many hours, many resizes) and every answer must be the same: rows, their order,
the JSON bytes of GET /flows (against msgspec's encoding of the same rows), hours and key counts.
"""

from __future__ import annotations

import gc
import sys
import threading

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowagg.schema import Flow, encode
from flowagg.store.table import HourTables, Pack, first_outside, hour_bounds, pack, split

INT64_MAX = 2**63 - 1


class Model:
    """hour -> {(src, dest, vpc): [tx, rx]}, dicts keeping first appearance; Python ints."""

    def __init__(self) -> None:
        self.hours: dict[int, dict[tuple[str, str, str], list[int]]] = {}

    def merge(self, flows, cutoff: int = 0) -> tuple[int, int]:
        applied = new = 0
        for f in flows:
            if f.hour < cutoff:
                continue
            applied += 1
            rows = self.hours.setdefault(f.hour, {})
            key = (f.src_app, f.dest_app, f.vpc_id)
            if key not in rows:
                rows[key] = [0, 0]
                new += 1
            rows[key][0] += f.bytes_tx
            rows[key][1] += f.bytes_rx
        return applied, new

    def rows(self, hour: int) -> list[tuple]:
        return [(*key, tx, rx) for key, (tx, rx) in self.hours.get(hour, {}).items()]

    def drop_before(self, cutoff: int) -> tuple[int, int]:
        old = [h for h in self.hours if h < cutoff]
        keys = sum(len(self.hours[h]) for h in old)
        for h in old:
            del self.hours[h]
        return len(old), keys

    @property
    def keys(self) -> int:
        return sum(len(rows) for rows in self.hours.values())


def same(tables: HourTables, model: Model) -> None:
    assert tables.hours() == sorted(model.hours)
    assert len(tables) == len(model.hours)
    assert tables.keys == model.keys
    assert tables.newest == max(model.hours, default=-1)
    for hour in model.hours:
        rows = model.rows(hour)
        assert tables.rows(hour) == rows
        assert tables.key_count(hour) == len(rows)
        assert tables.encode(hour) == encode([Flow(*row, hour) for row in rows])


# Names that stress hashing, comparison and JSON escaping: short and long, ASCII and not,
# and the characters a separator or an escape would use.
NAMES = st.one_of(
    st.sampled_from(["a", "b", "ab", "a:b", "b:c", 'q"', "back\\slash", "nul\x00", "tab\t", "é"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
)
COUNTS = st.one_of(st.integers(0, 10), st.integers(0, INT64_MAX), st.just(INT64_MAX))
HOURS = st.integers(0, 6)


@st.composite
def flows(draw, max_size: int = 60):
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    pick = st.sampled_from(names)
    return [
        Flow(draw(pick), draw(pick), draw(pick), draw(COUNTS), draw(COUNTS), draw(HOURS))
        for _ in range(draw(st.integers(0, max_size)))
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.tuples(flows(), st.integers(0, 3)), max_size=8))
def test_tables_agree_with_the_model_on_random_batches(batches):
    tables, model = HourTables(), Model()
    for batch, cutoff in batches:
        assert tables.merge(batch, cutoff) == model.merge(batch, cutoff)
        same(tables, model)


@settings(max_examples=50, deadline=None)
@given(batches=st.lists(flows(), min_size=1, max_size=5), cutoff=st.integers(0, 8))
def test_dropping_hours_agrees_with_the_model(batches, cutoff):
    tables, model = HourTables(), Model()
    for batch in batches:
        tables.merge(batch)
        model.merge(batch)
    assert tables.drop_before(cutoff) == model.drop_before(cutoff)
    same(tables, model)
    tables.merge(batches[0])  # hours come back if merged again: the caller keeps the cutoff
    model.merge(batches[0])
    same(tables, model)


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_json_of_any_name_is_what_msgspec_writes(text):
    name = text or "x"
    tables = HourTables()
    tables.merge([Flow(name, name + "\x1f", "\\" + name, 1, 2, 3)])
    assert tables.encode(3) == encode([Flow(name, name + "\x1f", "\\" + name, 1, 2, 3)])
    assert msgspec.json.decode(tables.encode(3))[0]["src_app"] == name


def test_every_ascii_character_is_escaped_as_msgspec_escapes_it():
    names = [chr(c) for c in range(128)]
    tables = HourTables()
    tables.merge([Flow(n, "d", "v", 1, 1, 0) for n in names])
    assert tables.encode(0) == encode([Flow(n, "d", "v", 1, 1, 0) for n in names])


def test_rows_come_in_order_of_first_appearance_across_merges():
    tables = HourTables()
    tables.merge([Flow("x", "b", "v", 1, 2, 1), Flow("y", "b", "v", 3, 4, 1)])
    tables.merge([Flow("z", "b", "v", 5, 6, 1), Flow("x", "b", "v", 10, 20, 1)])
    assert tables.rows(1) == [("x", "b", "v", 11, 22), ("y", "b", "v", 3, 4), ("z", "b", "v", 5, 6)]


def test_keys_are_three_names_never_joined():
    tables = HourTables()
    tables.merge([Flow("a", "b:c", "v", 1, 1, 1), Flow("a:b", "c", "v", 2, 2, 1)])
    tables.merge([Flow("a\x00b", "c", "v", 3, 3, 1), Flow("a", "b\x00c", "v", 4, 4, 1)])
    assert [row[:3] for row in tables.rows(1)] == [
        ("a", "b:c", "v"),
        ("a:b", "c", "v"),
        ("a\x00b", "c", "v"),
        ("a", "b\x00c", "v"),
    ]


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([(INT64_MAX, 0), (1, 0)], (INT64_MAX + 1, 0)),
        ([(INT64_MAX, INT64_MAX)] * 3, (3 * INT64_MAX, 3 * INT64_MAX)),
        ([(INT64_MAX, 1)] * 5 + [(1, 1)], (5 * INT64_MAX + 1, 6)),
        ([(INT64_MAX, 0)] * 1000, (1000 * INT64_MAX, 0)),
    ],
    ids=["just-over-int64", "over-uint64", "many-carries", "a-thousand-maxima"],
)
def test_sums_are_exact_beyond_64_bits(counts, expected):
    tables = HourTables()
    tables.merge([Flow("other", "b", "v", 1, 1, 7)])
    for tx, rx in counts:
        tables.merge([Flow("a", "b", "v", tx, rx, 7)])
    assert tables.rows(7) == [("other", "b", "v", 1, 1), ("a", "b", "v", *expected)]
    assert tables.encode(7) == encode([Flow(*row, 7) for row in tables.rows(7)])


def test_one_batch_can_carry_a_key_past_2_to_the_64():
    tables = HourTables()
    tables.merge([Flow("a", "b", "v", INT64_MAX, 1, 1)] * 5)
    assert tables.rows(1) == [("a", "b", "v", 5 * INT64_MAX, 5)]


def test_rows_from_a_snapshot_keep_sums_of_any_size_below_2_to_the_128():
    tables = HourTables()
    assert tables.merge_rows(4, [("a", "b", "v", 2**100, 5), ("c", "d", "v", 1, 2**64)]) == 2
    tables.merge([Flow("a", "b", "v", 1, 1, 4)])
    assert tables.rows(4) == [("a", "b", "v", 2**100 + 1, 6), ("c", "d", "v", 1, 2**64)]
    with pytest.raises(OverflowError):
        tables.merge_rows(4, [("e", "f", "v", 2**128, 0)])
    with pytest.raises(TypeError):
        tables.merge_rows(4, [("e", "f", "v", 1)])


def test_a_counter_that_would_pass_2_to_the_128_is_refused_and_nothing_changes():
    tables = HourTables()
    tables.merge_rows(1, [("a", "b", "v", 2**128 - 2, 0)])
    before = tables.rows(1)
    with pytest.raises(OverflowError):
        tables.merge([Flow("x", "y", "v", 0, 0, 1), Flow("a", "b", "v", 5, 0, 1)])
    assert tables.rows(1) == before
    assert tables.keys == 1


BAD = [
    (Flow("a", "b", "v", 1, 1, 1), "not a flow", AttributeError),
    (Flow("a", "b", "v", 1, 1, 1), Flow(None, "b", "v", 1, 1, 1), TypeError),  # type: ignore[arg-type]
    (Flow("a", "b", "v", 1, 1, 1), Flow("a", "b", "v", -1, 1, 1), ValueError),
    (Flow("a", "b", "v", 1, 1, 1), Flow("a", "b", "v", 1.5, 1, 1), TypeError),  # type: ignore[arg-type]
    (Flow("a", "b", "v", 1, 1, 1), Flow("a", "b", "v", 2**64, 1, 1), OverflowError),
    (Flow("a", "b", "v", 1, 1, 1), Flow("\ud800", "b", "v", 1, 1, 1), UnicodeEncodeError),
]


@pytest.mark.parametrize(
    "good, bad, error",
    BAD,
    ids=["no-fields", "name-none", "negative", "float", "2**64", "surrogate"],
)
def test_a_bad_record_anywhere_leaves_the_tables_unchanged(good, bad, error):
    tables = HourTables()
    tables.merge([Flow("kept", "b", "v", 1, 1, 1)])
    batch = [good] * 700 + [bad] + [good] * 10  # large enough to take the path without the GIL
    with pytest.raises(error):
        tables.merge(batch)
    assert tables.hours() == [1]
    assert tables.rows(1) == [("kept", "b", "v", 1, 1)]
    assert tables.keys == 1


def test_flows_of_hours_below_the_cutoff_are_skipped():
    tables = HourTables()
    assert tables.merge([Flow("a", "b", "v", 1, 1, h) for h in (1, 5, 2, 9)], cutoff=5) == (2, 2)
    assert tables.hours() == [5, 9]


def test_growth_through_many_resizes_keeps_every_key():
    tables, model = HourTables(), Model()
    for start in range(0, 60_000, 7_000):  # batches of mixed sizes, old and new keys, 3 hours
        batch = [
            Flow(f"s{k % 997}", f"d{k // 997}", f"v{k % 3}", k, 1, k % 3)
            for k in range(start // 2, start + 7_000)
        ]
        assert tables.merge(batch) == model.merge(batch)
    same(tables, model)


def test_other_record_types_are_read_by_their_attributes():
    class Slotted:
        __slots__ = ("src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour")

        def __init__(self, *values):
            for name, value in zip(self.__slots__, values, strict=True):
                setattr(self, name, value)

    class Plain:
        def __init__(self, *values):
            self.__dict__.update(zip(Slotted.__slots__, values, strict=True))

    class Logged(msgspec.Struct, array_like=True):
        src_app: str
        dest_app: str
        vpc_id: str
        bytes_tx: int
        bytes_rx: int
        hour: int

    tables = HourTables()
    tables.merge([Slotted("a", "b", "v", 1, 2, 1), Plain("a", "b", "v", 3, 4, 1)])
    tables.merge([Logged("a", "b", "v", 5, 6, 1), Flow("a", "b", "v", 7, 8, 1)])
    assert tables.rows(1) == [("a", "b", "v", 16, 20)]
    # pack reads slots without references and the others by getattr, in one list
    mixed = [
        Plain("é", "b", "v", 1, 2, 1),
        Flow("a", "b", "v", 3, 4, 1),
        Slotted("a", "", "v", 5, 6, 2),
    ]
    assert [r for p in pack(mixed, 2).values() for r in p.records()] == [
        ("a", "", "v", 5, 6, 2), ("é", "b", "v", 1, 2, 1), ("a", "b", "v", 3, 4, 1),
    ]  # fmt: skip


def test_merging_holds_no_reference_after_it_returns():
    name = "".join(["ref", "count"])  # a fresh object
    before = sys.getrefcount(name)
    tables = HourTables()
    tables.merge([Flow(name, name, name, 1, 1, 1)] * 600)
    tables.merge([Flow(name, "b", "v", 1, 1, 1)])
    gc.collect()
    assert sys.getrefcount(name) == before


def test_re_merging_the_same_keys_allocates_nothing():
    tables = HourTables()
    batch = [Flow(f"s{k}", f"d{k % 10}", "v", 1, 1, 2) for k in range(5_000)]
    tables.merge(batch)
    held = tables.nbytes
    for _ in range(5):
        tables.merge(batch)
    assert tables.nbytes == held


def test_memory_per_key_hour_is_under_100_bytes_when_names_repeat():
    tables = HourTables()
    for start in range(0, 200_000, 1_000):
        tables.merge(
            [
                Flow(f"s{k % 1000}", f"d{k // 1000}", "v", 1, 1, 3)
                for k in range(start, start + 1_000)
            ]
        )
    assert tables.keys == 200_000
    assert tables.nbytes / tables.keys <= 100


def test_an_hour_without_data_reads_empty_and_out_of_range_hours_too():
    tables = HourTables()
    tables.merge([Flow("a", "b", "v", 1, 1, 1)])
    for hour in (0, 2, -1, 2**64, 2**200):
        assert tables.rows(hour) == []
        assert tables.encode(hour) == b"[]"
        assert tables.key_count(hour) == 0
    with pytest.raises(TypeError):
        tables.rows("1")


def test_readers_in_other_threads_see_whole_merges():
    """Encoding a large hour gives up the GIL; a merge in another thread waits for the owner's
    lock in the service. Here the tables themselves refuse a concurrent merge rather than let
    it change memory a reader is walking: every attempt either runs before or after the
    encode, or raises RuntimeError."""
    tables = HourTables()
    tables.merge([Flow(f"s{k}", "d", "v", 1, 1, 1) for k in range(50_000)])
    expected = tables.encode(1)
    start = threading.Barrier(2, timeout=10)
    answers: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        start.wait()
        for _ in range(20):
            answers.append(tables.encode(1))

    def write() -> None:
        start.wait()
        for _ in range(200):
            try:
                tables.merge([Flow("new", "d", "v", 0, 0, 2)])
            except RuntimeError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(a == expected for a in answers) and len(answers) == 20
    assert all("in use by another thread" in str(e) for e in errors)


# -- batch helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hours, n, expected",
    [
        ([1, 2, 5, 9, 6], 4, {1: [1, 5, 9], 2: [2, 6]}),
        ([3, 7, 11], 4, {3: [3, 7, 11]}),
        ([3, 4], 1, {0: [3, 4]}),
        ([0, 100_000, 70_000], 100_000, {0: [0, 100_000], 70_000: [70_000]}),
        ([], 8, {}),
    ],
    ids=["two-partitions", "one-partition", "one-of-one", "many-partitions", "empty"],
)
def test_split_groups_by_partition_in_request_order(hours, n, expected):
    flows = [Flow("a", "b", "v", i, 0, hour) for i, hour in enumerate(hours)]
    parts = split(flows, n)
    assert {i: [f.hour for f in part] for i, part in parts.items()} == expected
    assert list(parts) == sorted(parts)
    if len(expected) == 1:
        assert next(iter(parts.values())) is flows  # one partition: the list itself, no copy
    assert [f.bytes_tx for part in parts.values() for f in part] == sorted(
        f.bytes_tx for f in flows
    ) or len(parts) > 1


def test_split_keeps_each_record_once():
    flows = [Flow("a", "b", "v", i, 0, i % 7) for i in range(1000)]
    parts = split(flows, 3)
    assert sorted(f.bytes_tx for part in parts.values() for f in part) == list(range(1000))
    for index, part in parts.items():
        assert [f.bytes_tx for f in part] == sorted(f.bytes_tx for f in part)
        assert all(f.hour % 3 == index for f in part)


# -- packs: a request split by partition and copied out of its records --------------------------


def as_tuple(f: Flow) -> tuple:
    return (f.src_app, f.dest_app, f.vpc_id, f.bytes_tx, f.bytes_rx, f.hour)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=flows(), n=st.integers(1, 12))
def test_pack_splits_by_partition_and_copies_every_field(batch, n):
    packs = pack(batch, n)
    assert list(packs) == sorted(packs)
    assert {i: p.records() for i, p in packs.items()} == {
        i: [as_tuple(f) for f in batch if f.hour % n == i] for i in {f.hour % n for f in batch}
    }
    assert all(isinstance(p, Pack) and len(p) == len(p.records()) for p in packs.values())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.tuples(flows(), st.integers(0, 3)), max_size=6), n=st.integers(1, 4))
def test_merging_packs_agrees_with_the_model(batches, n):
    """What the drainer does: a request's packs, several requests at once, into one partition's
    tables (here every partition's packs go to one table, which the model sums the same way)."""
    tables, model = HourTables(), Model()
    for batch, cutoff in batches:
        packs = list(pack(batch, n).values())
        expected = model.merge(batch, cutoff)
        assert (tables.merge(packs, cutoff) if packs else (0, 0)) == expected
        same(tables, model)


def test_a_pack_counts_new_keys_as_its_flows_would():
    tables = HourTables()
    tables.merge([Flow("a", "b", "v", 1, 1, 1)])
    batch = [Flow("a", "b", "v", 1, 1, h) for h in (1, 1, 2)]
    batch[1].src_app = batch[2].src_app = "x"
    assert tables.count_new(list(pack(batch, 1).values())) == tables.count_new(batch) == 2


def test_a_pack_spread_over_many_partitions_keeps_each_record_once():
    batch = [Flow("a", "b", "v", i, 0, i) for i in range(1000)]  # 1,000 partitions: the map path
    packs = pack(batch, 5000)
    assert list(packs) == list(range(1000))
    assert [r for p in packs.values() for r in p.records()] == [as_tuple(f) for f in batch]


def test_a_pack_holds_no_reference_to_the_records():
    batch = [Flow(f"s{i}", "d", "v", i, 0, i % 3) for i in range(100)]
    before = [sys.getrefcount(f.src_app) for f in batch]
    packs = pack(batch, 2)
    assert [sys.getrefcount(f.src_app) for f in batch] == before
    del batch
    gc.collect()
    assert sum(len(p) for p in packs.values()) == 100
    assert packs[0].records()[0] == ("s0", "d", "v", 0, 0, 0)
    assert packs[0].nbytes < 100 * 100  # items of 48 bytes plus the names' bytes


def test_a_bad_record_anywhere_fails_the_whole_pack():
    good = [Flow("a", "b", "v", 1, 1, 1)] * 10
    with pytest.raises(TypeError, match="src_app must be a str"):
        pack(good + [Flow(3, "b", "v", 1, 1, 1)] + good, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be at least 1"):
        pack(good, 0)
    assert pack([], 4) == {}


def test_a_batch_is_all_records_or_all_packs():
    [part] = pack([Flow("a", "b", "v", 1, 1, 1)], 1).values()
    tables = HourTables()
    with pytest.raises(TypeError, match="all flow records or all Packs"):
        tables.merge([part, Flow("a", "b", "v", 1, 1, 1)])
    assert tables.keys == 0
    with pytest.raises(TypeError):
        Pack()


def test_hour_bounds_and_first_outside():
    flows = [Flow("a", "b", "v", 0, 0, h) for h in (5, 3, 9, 4)]
    assert hour_bounds(flows) == (3, 9)
    assert hour_bounds([]) is None
    assert first_outside(flows, 3, 9) == -1
    assert first_outside(flows, 4, 9) == 1
    assert first_outside(flows, 0, 8) == 2
    assert first_outside(flows, -5, 2**62) == -1


# -- memory: counted exactly, reserved for what is new, given back -----------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.tuples(flows(max_size=80), st.booleans()), min_size=1, max_size=8))
def test_cost_is_exactly_what_a_merge_allocates(batches):
    tables, model = HourTables(), Model()
    for batch, as_packs in batches:
        records = list(pack(batch, 3).values()) if as_packs and batch else batch
        before = tables.nbytes
        new_keys, new_bytes = tables.cost(records)
        assert tables.nbytes == before  # cost changes nothing
        keys_before = tables.keys
        assert tables.merge(records) == model.merge(batch)
        assert new_keys == tables.keys - keys_before
        assert tables.nbytes - before == new_bytes
    same(tables, model)


def test_copies_of_one_key_reserve_for_one():
    name = "n" * 1024
    tables = HourTables()
    tables.merge([Flow(name, name + "d", name + "v", 1, 1, 1)])
    one = tables.nbytes
    assert tables.cost([Flow(name, name + "d", name + "v", 1, 1, 1)] * 20_000) == (0, 0)
    tables.merge([Flow(name, name + "d", name + "v", 1, 1, 1)] * 20_000)
    assert tables.nbytes == one
    copies = [Flow("x" + name, name + "d", name + "v", 1, 1, 2)] * 20_000
    assert tables.cost(list(pack(copies, 1).values()))[0] == 1
    tables.merge(list(pack(copies, 1).values()))
    assert tables.nbytes < 2 * one + 512  # the second hour: one key, one new name's bytes
    assert tables.rows(2) == [("x" + name, name + "d", name + "v", 20_000, 20_000)]


def test_a_small_hour_costs_what_it_holds():
    tables = HourTables()
    tables.merge([Flow("src-1", "dest-1", "vpc-0", 1, 2, h) for h in range(1000)])
    per_hour = tables.nbytes / 1000
    # The Hour, one entry, three names and their 17 bytes, and its place in the hours' index.
    assert per_hour < 128 + 32 + 3 * 16 + 17 + 32
    tables.drop_before(1000)
    assert tables.nbytes == 0 and len(tables) == 0


def test_packs_grow_from_what_they_hold_not_from_the_request_length():
    long = Flow("a" * 1024, "b" * 1024, "c" * 1024, 1, 1, 1)
    flows = [long] + [Flow("a", "b", "c", 1, 1, 1)] * 100_000
    part = pack(flows, 1)[0]
    assert part.name_bytes == 3 * 1024 + 3 * 100_000
    assert part.nbytes < 100_001 * 48 + 2 * part.name_bytes
