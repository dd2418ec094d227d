"""Coverage-guided fuzzing of the native tables against the dict model (atheris, libFuzzer).

    make check-native            # runs it for FUZZ_SECONDS under AddressSanitizer and UBSan

Each input is a script of operations read with atheris's FuzzedDataProvider: merges of flow
records, of packs (``pack``) and of snapshot rows, with arbitrary names (any code point, empty,
long, shared between fields) and counters up to 2**64 - 1 that overflow 128 bits when summed
long enough; ``encode``, ``rows``, ``cost``/``count_new``, ``scan`` into ``Groups``, range
scans, ``hours`` and ``drop_before``. After each operation the tables must agree with the model
of tests/test_table.py, and a refused operation (OverflowError past 2**128) must change nothing.
The corpus in tests/fuzz/corpus/ seeds each run; new inputs go to a scratch directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from flowagg.schema import Flow, encode
    from flowagg.store.table import Groups, HourTables, pack

U128 = 2**128
FIXED = ["a", "b", "", "a:b", 'q"', "\\", "\x00", "\t", "é", "日本", "x" * 40, "y" * 300]


class Model:
    """hour -> {(src, dest, vpc): [tx, rx]} in order of first appearance; Python ints."""

    def __init__(self) -> None:
        self.hours: dict[int, dict[tuple[str, str, str], list[int]]] = {}

    def merge(self, rows: list[tuple], check_only: bool = False) -> int | None:
        """Add (hour, src, dest, vpc, tx, rx) rows; None (and no change) if a sum passes
        2**128; else the number of new key-hours."""
        sums: dict[tuple, list[int]] = {}
        for hour, *key, tx, rx in rows:
            held = self.hours.get(hour, {}).get(tuple(key), [0, 0])
            total = sums.setdefault((hour, *key), list(held))
            total[0] += tx
            total[1] += rx
        if any(v >= U128 for total in sums.values() for v in total):
            return None
        new = 0
        if not check_only:
            for hour, *key, tx, rx in rows:
                table = self.hours.setdefault(hour, {})
                if tuple(key) not in table:
                    table[tuple(key)] = [0, 0]
                    new += 1
                table[tuple(key)][0] += tx
                table[tuple(key)][1] += rx
        return new

    def rows(self, hour: int) -> list[tuple]:
        return [(*k, tx, rx) for k, (tx, rx) in self.hours.get(hour, {}).items()]


def names(fdp: atheris.FuzzedDataProvider, count: int) -> list[str]:
    out = []
    for _ in range(count):
        if fdp.ConsumeBool():
            out.append(FIXED[fdp.ConsumeIntInRange(0, len(FIXED) - 1)])
        else:
            text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
            out.append(text)
    return out


def counter(fdp: atheris.FuzzedDataProvider) -> int:
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        return fdp.ConsumeIntInRange(0, 10)
    if kind == 1:
        return 2**64 - 1 - fdp.ConsumeIntInRange(0, 3)
    return fdp.ConsumeIntInRange(0, 2**64 - 1)


def check(tables: HourTables, model: Model) -> None:
    assert tables.hours() == sorted(model.hours), (tables.hours(), sorted(model.hours))
    assert tables.keys == sum(len(t) for t in model.hours.values())
    for hour in model.hours:
        rows = model.rows(hour)
        assert tables.rows(hour) == rows
        assert tables.key_count(hour) == len(rows)
        assert tables.encode(hour) == encode([Flow(*row, hour) for row in rows])


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    tables, model = HourTables(), Model()
    pool = names(fdp, fdp.ConsumeIntInRange(1, 8))
    for _ in range(fdp.ConsumeIntInRange(1, 12)):
        op = fdp.ConsumeIntInRange(0, 6)
        if op <= 2:  # merge flow records (0), packs (1) or snapshot rows of one hour (2)
            hour = fdp.ConsumeIntInRange(0, 5)
            batch = []
            for _ in range(fdp.ConsumeIntInRange(0, 40)):
                pick = [pool[fdp.ConsumeIntInRange(0, len(pool) - 1)] for _ in range(3)]
                h = hour if op == 2 else fdp.ConsumeIntInRange(0, 5)
                batch.append((h, *pick, counter(fdp), counter(fdp)))
            before = tables.nbytes
            if op == 2:
                records = [row[1:] for row in batch]
                expected = model.merge(batch, check_only=True)
                cost = None
            else:
                flows = [Flow(*row[1:], row[0]) for row in batch]
                records = list(pack(flows, 3).values()) if op == 1 and flows else flows
                expected = model.merge(batch, check_only=True)
                cost = tables.cost(records) if expected is not None else None
            try:
                new = tables.merge_rows(hour, records) if op == 2 else tables.merge(records)[1]
            except OverflowError:
                assert expected is None
                assert tables.nbytes >= before
            else:
                assert expected is not None
                assert new == model.merge(batch)
                if cost is not None:
                    assert cost == (new, tables.nbytes - before)
        elif op == 3:  # drop old hours
            cutoff = fdp.ConsumeIntInRange(0, 6)
            dropped = [h for h in model.hours if h < cutoff]
            keys = sum(len(model.hours[h]) for h in dropped)
            assert tables.drop_before(cutoff) == (len(dropped), keys)
            for h in dropped:
                del model.hours[h]
        elif op == 4:  # a range scan into Groups, grouped by some fields, filtered by names
            by = ("src_app", "dest_app", "vpc_id")[: fdp.ConsumeIntInRange(1, 3)]
            keep = tuple(pool[: fdp.ConsumeIntInRange(1, len(pool))])
            filters = (keep if fdp.ConsumeBool() else None, None, None)
            groups = Groups(by)
            expected: dict[tuple, list[int]] = {}
            for hour in range(0, 6):
                for row in model.rows(hour):
                    if filters[0] is None or row[0] in filters[0]:
                        sums = expected.setdefault(row[: len(by)], [0, 0])
                        sums[0] += row[3]
                        sums[1] += row[4]
            totals = [sum(v[c] for v in expected.values()) for c in (0, 1)]
            try:
                for hour in range(0, 6):
                    tables.scan(hour, groups, filters)
                total = groups.total
            except OverflowError:  # a group's sum, or the total, passed 2**128
                assert max(totals, default=0) >= U128
            else:
                assert total == (len(expected), *totals)
                got = groups.values(list(expected))
                assert got == [tuple(v) for v in expected.values()]
        elif op == 5:  # count_new and cost of a batch, merged or not
            flows = [
                Flow(
                    *(pool[fdp.ConsumeIntInRange(0, len(pool) - 1)] for _ in range(3)),
                    1,
                    1,
                    fdp.ConsumeIntInRange(0, 5),
                )
                for _ in range(fdp.ConsumeIntInRange(0, 20))
            ]
            new = {(f.hour, f.src_app, f.dest_app, f.vpc_id) for f in flows}
            held = {(h, *k) for h, t in model.hours.items() for k in t}
            assert tables.count_new(flows) == len(new - held)
        else:  # reads of hours nobody holds, and of odd hour numbers
            for hour in (fdp.ConsumeIntInRange(0, 2**64 - 1), -1, 2**70):
                rows = tables.rows(hour)
                assert rows == model.rows(hour) or hour in model.hours
        check(tables, model)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
