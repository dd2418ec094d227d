"""The durable store: every accepted request is logged before it is answered.

    store.py        ``DurableStore``: ingest through the log, compaction, recovery, close
    wal.py          the write-ahead log: record framing, damage detection, group commit
    snapshot.py     snapshot files: write (temporary file, fsync, rename) and load
    idempotency.py  ``Idempotency-Key``s within their window

``create_app`` and ``python -m flowagg`` need only what is imported here.
"""

from flowagg.store.durable.store import DataDirInUse, DurableStore, open_durable_store
from flowagg.store.durable.wal import CorruptFile

__all__ = ["CorruptFile", "DataDirInUse", "DurableStore", "open_durable_store"]
