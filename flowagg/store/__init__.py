"""Stores: everything behind the ``FlowStore`` interface, and nothing of HTTP.

    base.py        the interface: ``FlowStore``, the exceptions callers handle, the stats types
    memory.py      ``PartitionedStore``: N partitions in memory, routing by hour, retention
    partition.py   one partition: ring buffer, drainer thread, table, the read barrier
    ringbuffer.py  the bounded buffer a partition's producers put into
    rwlock.py      the writer-preferring lock around a partition's tables
    table.py       one hour's counters
    durable/       ``DurableStore``: the same tables, fed through a write-ahead log and snapshots

Callers outside this package import ``base`` only; ``create_app`` alone picks a concrete store.
Nothing is re-exported here: import from the module that defines a name.
"""
