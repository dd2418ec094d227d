"""The native module is safe against any Python caller, not only the partition that owns it.

Each test is a way a caller could once break the module (use after free, reads out of bounds,
undefined behaviour); `make check-native` runs them under AddressSanitizer and UBSan, which
report the fault itself where a plain build might only corrupt memory quietly. They also hold
the module to what it answers instead: RuntimeError for a use that would race a merge, and
TableFull or MemoryError for a merge that cannot be done, with the tables unchanged.
"""

from __future__ import annotations

import _testcapi
import gc
import threading

import pytest

from flowagg.schema import Flow
from flowagg.store import table
from flowagg.store.table import Groups, HourTables, TableFull, pack
from tests.conftest import WAIT_TIMEOUT

BIG = 20_000  # rows: an encode or merge of this many gives up the GIL


def big_hour(tables: HourTables, hour: int = 1, keys: int = BIG) -> None:
    tables.merge([Flow(f"s{k}", "d", "v", 1, 1, hour) for k in range(keys)])


class Record:
    """A flow record read by getattr (no slots), whose field runs ``hook`` when read."""

    def __init__(self, hook=None, **fields) -> None:
        self._hook = hook
        self._fields = fields

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._hook is not None and name == "hour":
            hook, self._hook = self._hook, None
            hook()
        return self._fields[name]


def record(hook=None, src="a", hour=1) -> Record:
    return Record(hook, src_app=src, dest_app="b", vpc_id="v", bytes_tx=1, bytes_rx=2, hour=hour)


# -- the busy guard: checked after any Python code, kept by every reader ------------------------


def test_a_merge_whose_records_start_a_reader_refuses_instead_of_racing_it():
    """Reading the batch runs Python code that starts an encode of the same hour in another
    thread (without the GIL); the merge must then refuse, not grow the hour under it."""
    tables = HourTables()
    big_hour(tables)
    before = tables.rows(1)
    inside = threading.Event()
    results = []

    def encode() -> None:
        inside.set()
        for _ in range(200):
            results.append(len(tables.encode(1)))

    reader = threading.Thread(target=encode)

    def start_reader() -> None:
        reader.start()
        assert inside.wait(WAIT_TIMEOUT)
        # Until the reader holds the tables, a writer may still pass: wait for it to refuse.
        for _ in range(10**6):
            try:
                tables.drop_before(0)
            except RuntimeError:
                return
        raise AssertionError("the reader never held the tables")

    batch = [record(start_reader, src="new", hour=1)] + [
        Flow(f"n{k}", "d", "v", 1, 1, 1) for k in range(BIG)
    ]
    try:
        with pytest.raises(RuntimeError, match="in use by another thread"):
            tables.merge(batch)
    finally:
        reader.join(WAIT_TIMEOUT * 3)
    assert tables.rows(1) == before
    assert set(results) == {len(tables.encode(1))}


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.rows(1),
        lambda t: t.key_count(1),
        lambda t: t.newest,
        lambda t: t.nbytes,
        lambda t: t.hours(),
        lambda t: len(t),
        lambda t: t.encode(1),
        lambda t: t.count_new([Flow("a", "b", "v", 1, 1, 1)]),
        lambda t: t.scan(1, Groups(("src_app",)), (None, None, None)),
    ],
    ids=["rows", "key_count", "newest", "nbytes", "hours", "len", "encode", "count_new", "scan"],
)
def test_readers_never_run_beside_a_merge(read):
    """A merge of many new hours without the GIL moves the hours' index; a reader in another
    thread meanwhile gets its answer from before or after it, or RuntimeError, never a read of
    freed memory."""
    tables = HourTables()
    tables.merge([Flow("a", "b", "v", 1, 1, 1)])
    done = threading.Event()
    refused = 0

    def merge() -> None:
        try:
            for round_ in range(6):
                flows = [Flow("a", "b", "v", 1, 1, 10 + round_ * BIG + h) for h in range(BIG)]
                tables.merge(flows)
        finally:
            done.set()

    writer = threading.Thread(target=merge)
    writer.start()
    try:
        while not done.is_set():
            try:
                read(tables)
            except RuntimeError as exc:
                assert "in use by another thread" in str(exc)
                refused += 1
    finally:
        writer.join(WAIT_TIMEOUT * 3)
    assert len(tables) == 1 + 6 * BIG
    assert tables.rows(1) == [("a", "b", "v", 1, 1)]


def test_a_finaliser_run_while_rows_are_made_cannot_merge_into_the_hour():
    """rows() makes tuples, which may run a garbage collection and the finalisers it finds;
    one that merges into the hour being read must be refused, not grow it under rows()."""
    tables = HourTables()
    big_hour(tables, keys=3000)
    refused = []

    class Finaliser:
        def __del__(self) -> None:
            try:
                tables.merge([Flow(f"late{k}", "d", "v", 1, 1, 1) for k in range(3000)])
            except RuntimeError:
                refused.append(True)

    rows_of = tables.rows  # bound now: nothing is allocated between enabling gc and rows()
    gc.disable()
    try:
        for _ in range(50):  # garbage in cycles, collected while rows() makes its tuples
            cycle = [Finaliser()]
            cycle.append(cycle)
            del cycle
        gc.set_threshold(1)
        gc.enable()
        rows = rows_of(1)
    finally:
        gc.set_threshold(700)
        gc.enable()
    gc.collect()
    assert len(rows) == 3000 and rows[0] == ("s0", "d", "v", 1, 1)
    assert len(refused) == 50
    assert tables.key_count(1) == 3000


# -- sequences changed by the Python code that reading them runs -------------------------------


def shrinking() -> list:
    """A list whose second record, when read, empties the list."""
    flows = [Flow("a", "b", "v", 1, 1, 1)]
    flows.append(record(lambda: flows.clear(), hour=2))
    flows.extend(Flow(f"x{k}", "b", "v", 1, 1, 3) for k in range(100))
    return flows


@pytest.mark.parametrize(
    "call",
    [
        lambda flows: HourTables().merge(flows),
        lambda flows: HourTables().count_new(flows),
        lambda flows: table.split(flows, 4),
        lambda flows: table.hour_bounds(flows),
        lambda flows: table.first_outside(flows, 0, 2),
        lambda flows: table.first_long_name(flows, 1000),
        lambda flows: pack(flows, 4),
    ],
    ids=["merge", "count_new", "split", "hour_bounds", "first_outside", "first_long_name", "pack"],
)
def test_a_list_emptied_while_it_is_read_is_never_read_past_its_end(call):
    """Either the records are read from a copy taken first, or the change is a RuntimeError;
    never a read of the list's freed items (AddressSanitizer reports that)."""
    try:
        call(shrinking())
    except RuntimeError as exc:
        assert "changed" in str(exc)


def test_a_merge_reads_the_records_as_they_were_when_called():
    tables = HourTables()
    assert tables.merge(shrinking()) == (102, 102)
    assert tables.hours() == [1, 2, 3]


# -- record layouts ------------------------------------------------------------------------------


def test_a_slot_descriptor_taken_from_another_class_is_not_trusted():
    """A class that borrows another class's member descriptors must not have its instances
    read at that class's offsets (they lie past the end of the smaller instance)."""

    class Wide:
        __slots__ = tuple(f"pad{i}" for i in range(64)) + (
            "src_app",
            "dest_app",
            "vpc_id",
            "bytes_tx",
            "bytes_rx",
            "hour",
        )

    class Narrow:
        __slots__ = ("x",)

    for name in ("src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour"):
        setattr(Narrow, name, Wide.__dict__[name])
    crafted = [Narrow()]
    for call in (
        lambda: HourTables().merge(crafted),
        lambda: pack(crafted, 2),
        lambda: table.hour_bounds(crafted),
        lambda: table.split(crafted + [Flow("a", "b", "v", 1, 1, 1)], 2),
    ):
        with pytest.raises(TypeError):  # getattr: the descriptor does not apply to Narrow
            call()


def test_a_class_changed_after_it_was_read_is_read_afresh():
    class Slotted:
        __slots__ = ("src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour")

        def __init__(self, hour: int) -> None:
            self.src_app, self.dest_app, self.vpc_id = "a", "b", "v"
            self.bytes_tx, self.bytes_rx, self.hour = 1, 2, hour

    tables = HourTables()
    tables.merge([Slotted(1)])
    later = Slotted(1)
    Slotted.hour = property(lambda self: 7)  # the slot is no longer what `hour` reads
    tables.merge([later])
    assert tables.hours() == [1, 7]


# -- empty names, and what a merge that cannot be done raises ----------------------------------


def test_empty_names_are_stored_and_encoded():
    tables = HourTables()
    flows = [Flow("", "", "", 1, 2, 5), Flow("", "", "", 3, 4, 5), Flow("a", "", "", 1, 1, 5)]
    tables.merge(flows)
    tables.merge(list(pack(flows, 1).values()))
    assert tables.rows(5) == [("", "", "", 8, 12), ("a", "", "", 2, 2)]
    assert tables.encode(5).startswith(b'[{"src_app":"","dest_app":"","vpc_id":""')
    assert pack([Flow("", "", "", 1, 1, 1)], 1)[0].records() == [("", "", "", 1, 1, 1)]


def test_an_hour_past_its_key_limit_is_table_full_not_memory_error():
    assert not issubclass(TableFull, MemoryError)
    tables = HourTables()
    tables.merge([Flow(f"k{k}", "d", "v", 1, 1, 1) for k in range(3)])
    before, nbytes = tables.rows(1), tables.nbytes
    previous = table._set_max_entries(10)
    try:
        with pytest.raises(TableFull):
            tables.merge([Flow(f"n{k}", "d", "v", 1, 1, 1) for k in range(8)])
        with pytest.raises(TableFull):
            tables.cost([Flow(f"n{k}", "d", "v", 1, 1, 1) for k in range(8)])
        tables.merge([Flow("k0", "d", "v", 1, 1, 1)] * 100)  # increments: fine
    finally:
        table._set_max_entries(previous)
    assert tables.rows(1) == [("k0", "d", "v", 101, 101)] + before[1:]
    assert tables.nbytes == nbytes


@pytest.mark.parametrize("after", [0, 1, 2, 3, 5, 8])
def test_a_merge_without_memory_is_memory_error_and_changes_nothing(after):
    tables = HourTables()
    tables.merge([Flow(f"k{k}", "d", "v", 1, 1, 1) for k in range(5)])
    before, nbytes = tables.rows(1), tables.nbytes
    flows = [Flow(f"n{k}", "d", "v", 1, 1, h) for k in range(40) for h in (1, 2)]
    packs = list(pack(flows, 1).values())
    _testcapi.set_nomemory(after, 0)  # every allocation from the after-th on fails
    try:
        tables.merge(packs)
    except MemoryError:
        failed = True
    else:
        failed = False
    finally:
        _testcapi.remove_mem_hooks()
    if failed:  # nothing held changed; only room may have grown, and nbytes says so
        assert tables.rows(1) == before and tables.hours() == [1]
        assert tables.nbytes >= nbytes
        assert tables.cost(packs) == (80, tables.cost(packs)[1])
        tables.merge(packs)
    assert tables.key_count(1) == 45 and tables.key_count(2) == 40
