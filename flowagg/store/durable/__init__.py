"""The durable store: every accepted request is logged before it is answered.

    store.py        ``DurableStore``: a ``PartitionedStore`` fed through the log; the gate
    records.py      the log record of one request
    recovery.py     start-up: load the newest snapshot, replay the logs after it
    compaction.py   the snapshot cut and write, which replace older logs
    directory.py    the data directory: its lock, its numbered files
    framing.py      record framing shared by logs and snapshots; damage detection
    wal.py          the write-ahead log: appends, group commit, rotation
    snapshot.py     snapshot files: write (temporary file, fsync, rename) and load
    idempotency.py  ``Idempotency-Key``s within their window

``create_app`` and ``python -m flowagg`` need only what is imported here.
"""

from flowagg.store.durable.directory import DataDirInUse
from flowagg.store.durable.framing import CorruptFile
from flowagg.store.durable.store import DurableStore, open_durable_store

__all__ = ["CorruptFile", "DataDirInUse", "DurableStore", "open_durable_store"]
