import os

import pytest

from flowagg import create_app
from flowagg.config import DEFAULTS, ConfigError, resolve
from flowagg.hostmemory import default_memory_limit, memory_available


def test_defaults():
    assert resolve({}) == {
        "FLOWAGG_PARTITIONS": 8,
        "FLOWAGG_BUFFER_CAPACITY": 262_144,
        "FLOWAGG_MAX_BODY_BYTES": 64 * 1024 * 1024,
        "FLOWAGG_ENQUEUE_TIMEOUT_MS": 2_000,
        "FLOWAGG_RETENTION_HOURS": None,
        "FLOWAGG_MAX_FUTURE_HOURS": None,
        "FLOWAGG_MAX_KEYS": 20_000_000,
        "FLOWAGG_MAX_MEMORY_BYTES": default_memory_limit(),
        "FLOWAGG_MAX_NAME_BYTES": 1024,
        "FLOWAGG_TOKENS_FILE": None,
        "FLOWAGG_ALLOWED_ORIGINS": None,
        "FLOWAGG_READY_BUFFER_PERCENT": 90,
        "FLOWAGG_LOG_FORMAT": "text",
        "FLOWAGG_LOG_LEVEL": "info",
        "FLOWAGG_LOG_BUFFER_BYTES": 8 * 1024 * 1024,
        "FLOWAGG_READ_TIMEOUT_MS": 10_000,
        "FLOWAGG_MAX_QUERY_HOURS": 744,
        "FLOWAGG_MAX_QUERY_ROWS": 50_000_000,
        "FLOWAGG_DATA_DIR": None,
        "FLOWAGG_FSYNC": "always",
        "FLOWAGG_FSYNC_INTERVAL_MS": 1000,
        "FLOWAGG_SNAPSHOT_BYTES": 64 * 1024 * 1024,
        "FLOWAGG_IDEMPOTENCY_TTL_S": 86_400,
        "FLOWAGG_REDIS_URL": None,
        "FLOWAGG_REDIS_BUCKETS": 16,
        "FLOWAGG_REDIS_TIMEOUT_MS": 2_000,
        "FLOWAGG_REDIS_WAIT_REPLICAS": 0,
        "FLOWAGG_REDIS_CACHE_BYTES": 256 * 1024 * 1024,
    }


def test_the_memory_limit_defaults_to_a_quarter_of_what_the_process_may_use():
    available, source = memory_available()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < available <= physical
    assert source == "physical memory" or source.startswith("the cgroup limit (/sys/fs/cgroup")
    assert default_memory_limit() == available // 4
    assert resolve({"FLOWAGG_MAX_MEMORY_BYTES": ""})["FLOWAGG_MAX_MEMORY_BYTES"] == available // 4


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("268435456", 268_435_456),
        ("256MiB", 256 * 2**20),
        ("256 MiB", 256 * 2**20),
        ("256m", 256 * 2**20),
        ("2GB", 2 * 10**9),
        ("1gib", 2**30),
        ("4096KiB", 4 * 2**20),
        ("1TB", 10**12),
        (2**21, 2**21),
    ],
)
def test_memory_sizes_take_units(raw, expected):
    assert resolve({}, {"FLOWAGG_MAX_MEMORY_BYTES": raw})["FLOWAGG_MAX_MEMORY_BYTES"] == expected


@pytest.mark.parametrize("raw", ["1.5GB", "256 MB MB", "-1MiB", "lots", "256XB", "1000", "1KiB"])
def test_a_memory_size_that_is_not_one_stops_start_up(raw):
    with pytest.raises(ConfigError, match=r"^FLOWAGG_MAX_MEMORY_BYTES="):
        resolve({"FLOWAGG_MAX_MEMORY_BYTES": raw})


def test_optional_and_enum_settings():
    values = resolve(
        {
            "FLOWAGG_RETENTION_HOURS": "24",
            "FLOWAGG_LOG_FORMAT": "JSON",
            "FLOWAGG_LOG_LEVEL": "debug",
        }
    )
    assert values["FLOWAGG_RETENTION_HOURS"] == 24
    assert values["FLOWAGG_LOG_FORMAT"] == "json"
    assert values["FLOWAGG_LOG_LEVEL"] == "debug"
    assert resolve({"FLOWAGG_RETENTION_HOURS": ""})["FLOWAGG_RETENTION_HOURS"] is None
    assert resolve({"FLOWAGG_RETENTION_HOURS": "0"})["FLOWAGG_RETENTION_HOURS"] == 0


def test_environment_overrides_defaults_and_test_config_overrides_both():
    values = resolve(
        {"FLOWAGG_PARTITIONS": "3", "FLOWAGG_BUFFER_CAPACITY": " 16 "}, {"FLOWAGG_PARTITIONS": 5}
    )
    assert values["FLOWAGG_PARTITIONS"] == 5
    assert values["FLOWAGG_BUFFER_CAPACITY"] == 16
    assert values["FLOWAGG_MAX_BODY_BYTES"] == DEFAULTS["FLOWAGG_MAX_BODY_BYTES"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FLOWAGG_PARTITIONS": "0"}, "FLOWAGG_PARTITIONS='0': must be >= 1"),
        ({"FLOWAGG_PARTITIONS": "abc"}, "FLOWAGG_PARTITIONS='abc': expected an integer"),
        ({"FLOWAGG_PARTITIONS": "1.5"}, "FLOWAGG_PARTITIONS='1.5': expected an integer"),
        ({"FLOWAGG_PARTITIONS": ""}, "FLOWAGG_PARTITIONS='': expected an integer"),
        ({"FLOWAGG_BUFFER_CAPACITY": "-4"}, "FLOWAGG_BUFFER_CAPACITY='-4': must be >= 1"),
        ({"FLOWAGG_RETENTION_HOURS": "-1"}, "FLOWAGG_RETENTION_HOURS='-1': must be >= 0"),
        (
            {"FLOWAGG_READY_BUFFER_PERCENT": "101"},
            "FLOWAGG_READY_BUFFER_PERCENT='101': must be <= 100",
        ),
        ({"FLOWAGG_LOG_FORMAT": "xml"}, "FLOWAGG_LOG_FORMAT='xml': expected one of text, json"),
        ({"FLOWAGG_PARTITONS": "4"}, "unknown setting FLOWAGG_PARTITONS"),
        ({"FLOWAGG_FSYNC": "sometimes"}, "FLOWAGG_FSYNC='sometimes': expected one of always, "),
        ({"FLOWAGG_FSYNC_INTERVAL_MS": "0"}, "FLOWAGG_FSYNC_INTERVAL_MS='0': must be >= 1"),
    ],
    ids=[
        "zero",
        "word",
        "fraction",
        "empty",
        "negative",
        "retention",
        "percent",
        "format",
        "typo",
        "fsync",
        "interval",
    ],
)
def test_invalid_environment_fails_naming_the_variable(environ, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        resolve(environ)


def test_invalid_test_config_is_refused_too():
    with pytest.raises(ConfigError, match="FLOWAGG_PARTITIONS=True: expected an integer"):
        resolve({}, {"FLOWAGG_PARTITIONS": True})


def test_create_app_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FLOWAGG_PARTITIONS", "3")
    monkeypatch.setenv("FLOWAGG_MAX_BODY_BYTES", "1234")
    app = create_app()
    try:
        store = app.extensions["flowagg"]
        assert len(store.partitions) == 3
        assert app.config["MAX_CONTENT_LENGTH"] == 1234
        assert [p._thread.name for p in store.partitions] == [
            f"flowagg-drain-{i}" for i in range(3)
        ]
    finally:
        assert store.close(10)


def test_create_app_stops_on_bad_environment_with_one_line(monkeypatch):
    monkeypatch.setenv("FLOWAGG_PARTITIONS", "0")
    with pytest.raises(SystemExit) as exc:
        create_app()
    assert exc.value.code == "flowagg: invalid configuration: FLOWAGG_PARTITIONS='0': must be >= 1"


def test_apps_do_not_share_state():
    first, second = create_app(), create_app()
    try:
        first.test_client().post(
            "/flows",
            data='[{"src_app":"a","dest_app":"b","vpc_id":"v","bytes_tx":1,"bytes_rx":1,"hour":1}]',
        )
        assert first.test_client().get("/flows?hour=1").get_json() != []
        assert second.test_client().get("/flows?hour=1").get_json() == []
    finally:
        assert first.extensions["flowagg"].close(10) and second.extensions["flowagg"].close(10)


def test_durability_settings_from_the_environment():
    values = resolve({"FLOWAGG_DATA_DIR": " /srv/flowagg ", "FLOWAGG_FSYNC": " Interval "})
    assert (values["FLOWAGG_DATA_DIR"], values["FLOWAGG_FSYNC"]) == ("/srv/flowagg", "interval")
    assert resolve({"FLOWAGG_DATA_DIR": ""})["FLOWAGG_DATA_DIR"] is None  # empty: in memory


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    with pytest.raises(ConfigError, match="FLOWAGG_DATA_DIR=.*: exists and is not a directory"):
        resolve({"FLOWAGG_DATA_DIR": str(path)})


def test_the_shippers_token_variable_does_not_stop_the_server():
    # FLOWAGG_TOKEN is read by flowagg ship; a shell that exports it may start the server too.
    assert resolve({"FLOWAGG_TOKEN": "secret"}) == resolve({})


def test_start_up_says_what_the_tables_may_hold_and_why(caplog):
    available, source = memory_available()
    caplog.set_level("INFO", logger="flowagg")
    app = create_app({"FLOWAGG_MAX_MEMORY_BYTES": None})
    given = create_app({"FLOWAGG_MAX_MEMORY_BYTES": "256MiB"})
    try:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:")]
        assert lines == [
            f"memory: the tables may hold {available // 4} bytes (FLOWAGG_MAX_MEMORY_BYTES"
            f" unset: a quarter of {available} bytes, {source})",
            "memory: the tables may hold 268435456 bytes (FLOWAGG_MAX_MEMORY_BYTES)",
        ]
    finally:
        app.extensions["flowagg"].close(5.0)
        given.extensions["flowagg"].close(5.0)
