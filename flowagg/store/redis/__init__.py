"""The Redis store: stateless instances over one Redis node or a Redis Cluster.

    store.py        ``RedisStore``: ingest, reads, range queries, lifecycle
    commit.py       the partitions: ring buffer, drainer, tickets, a POST's deadline
    writer.py       one group commit: packed deltas per bucket, calls per slot, outcomes
    compaction.py   folding a bucket's deltas into its base, at most once
    cache.py        recently read hours, checked against Redis on every read
    retention.py    the window of hours from Redis's clock, names, the hours listed in Redis
    clock.py        Redis's TIME, carried on between readings; this host's clock skew
    idempotency.py  Idempotency-Keys: lookup, fingerprint, binding
    meta.py         the layout recorded in Redis
    client.py       calls: pipelines per primary, deadlines, refusals, ASK/MOVED, WAIT
    topology.py     the slot map and the nodes known
    connection.py   one connection, a node's idle connections, error replies
    layout.py       keys, buckets, slots, the bucket list, expiry (versioned)
    functions.lua   the Redis Functions library: commit, compact, read, hours

``create_app`` imports ``store.open_redis_store`` and ``meta.LayoutMismatch``; nothing is
re-exported here.
"""
