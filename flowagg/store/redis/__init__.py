"""The Redis store: stateless instances over one Redis node or a Redis Cluster.

    store.py        ``RedisStore``: ingest, reads, range queries, lifecycle
    retention.py    the window of hours from the clock, names, the hours listed in Redis, expiry
    commit.py       the partitions: ring buffer, drainer, group commit of each drain step
    client.py       nodes, slot map, pipelines per primary, faults, loading the functions
    layout.py       keys, buckets, the field encoding of a flow key, counters (versioned)
    functions.lua   the Redis Functions library that commits one bucket of one hour

``create_app`` imports ``store.open_redis_store``; nothing is re-exported here.
"""
