"""``flowagg ship``: AWS VPC Flow Logs to a flowagg service, exactly once.

    cli.py       options, the run, exit statuses
    records.py   the VPC Flow Log format and the per-record loop (flows summed per batch)
    networks.py  the mapping file: addresses to applications by longest-prefix match
    source.py    a file (plain or .gz) read in whole lines from an offset
    shipper.py   batches as byte ranges, in flight under their Idempotency-Key
    state.py     the state file (offsets shipped, the batch in flight), replaced atomically
    follow.py    --follow: growing and rotated files
    progress.py  the progress bar or lines, and the summary

Built on ``flowagg.client``; imports nothing of the server (``flowagg.web``, ``flowagg.store``,
Flask).
"""
