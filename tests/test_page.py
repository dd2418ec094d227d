"""The page at GET / in a real headless Chromium, against waitress-serve in its own process.

Flows go in through the API; the test then reads the page as a person would: the range it picked,
the table's rows, shares and totals, the chart's bars and what hovering one shows, and what
changing the range, a filter or the grouping does to both. Expected values come from the same
model as the API tests (``expected_top``), formatted as the page formats them.

Chromium is Debian's (``make test`` installs the package when missing; without it these tests
fail, they do not skip), driven by Playwright with a fresh profile per test. Every request the
page makes must go to the server under test: nothing is fetched from anywhere else.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from tests.conftest import WAIT_TIMEOUT, flow
from tests.serverproc import WAITRESS, ServerProcess
from tests.test_queries_api import expected_top

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = WAIT_TIMEOUT * 1000
FIRST_HOUR = 490_000  # hours since the epoch: 2025-11-24 16:00 UTC
APPS = ["web", "api", "db", "cache", "auth", "search", "billing", "mail", "queue", "cdn", "logs"]
VPCS = ["vpc-a", "vpc-b"]


def utc(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:%M UTC")


def share(part: int, whole: int) -> str:
    if whole == 0:
        return "–"
    tenths = (part * 2000 + whole) // (2 * whole)
    return f"{tenths // 10}.{tenths % 10}%"


def table_of(top: dict) -> tuple[list[list[str]], list[list[str]]]:
    """The cells of the body rows and of the footer rows the page should show for ``top``."""
    key = {
        "bytes": lambda tx, rx: tx + rx,
        "bytes_tx": lambda tx, rx: tx,
        "bytes_rx": lambda tx, rx: rx,
    }
    measure = key[top["order"]]
    whole = measure(top["total"]["bytes_tx"], top["total"]["bytes_rx"])

    def numbers(tx: int, rx: int) -> list[str]:
        return [f"{tx:,}", f"{rx:,}", f"{tx + rx:,}", share(measure(tx, rx), whole)]

    body = [
        [str(i + 1), *(row[f] for f in top["by"]), *numbers(row["bytes_tx"], row["bytes_rx"])]
        for i, row in enumerate(top["rows"])
    ]
    foot = []
    for kind in ("other", "total"):
        s = top[kind]
        groups = f"{s['groups']:,} group{'' if s['groups'] == 1 else 's'}"
        foot.append(["", f"{kind} ({groups})", *numbers(s["bytes_tx"], s["bytes_rx"])])
    return body, foot


CELLS = "rows => rows.map(row => [...row.cells].map(cell => cell.textContent))"


class PageUnderTest:
    """A tab on the server's page that records every request and every script error."""

    def __init__(self, context: BrowserContext, server: ServerProcess) -> None:
        self.base = f"http://127.0.0.1:{server.port}/"
        self.page: Page = context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self._console)

    def _console(self, message) -> None:
        # The browser's own line for an API error (4xx, 5xx) is expected: the page explains it.
        expected = message.text.startswith("Failed to load resource: the server responded")
        if message.type == "error" and not expected:
            self.errors.append(message.text)

    def open(self, fragment: str = "") -> Page:
        self.page.goto(self.base + fragment)
        return self.page

    def expect_table(self, top: dict) -> None:
        body, foot = table_of(top)
        rows = self.page.locator("#top tbody tr.row")
        expect(rows).to_have_text(["".join(cells) for cells in body])
        assert rows.evaluate_all(CELLS) == body
        assert self.page.locator("#top tfoot tr").evaluate_all(CELLS) == foot
        header = ["#", *top["by"], "bytes_tx", "bytes_rx", "bytes", f"share of {top['order']}"]
        assert self.page.locator("#top thead th").all_text_contents() == header

    def bar_hours(self) -> list[int]:
        return [
            int(h)
            for h in self.page.locator("#chart g.bar").evaluate_all(
                "bars => bars.map(bar => bar.dataset.hour)"
            )
        ]

    def check_clean(self) -> None:
        """No script error, and not one request to anything but the server under test."""
        assert self.errors == []
        assert self.requests and all(url.startswith(self.base) for url in self.requests)


@pytest.fixture(scope="module")
def playwright():
    assert CHROMIUM.exists(), (
        "chromium is missing: `make test` installs it (apt-get install chromium)"
    )
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser(playwright, tmp_path) -> BrowserContext:
    context = playwright.chromium.launch_persistent_context(
        tmp_path / "chromium-profile",
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 1000},
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def start_service():
    """waitress-serve with the given settings; stopped (SIGTERM, then SIGKILL) on teardown."""
    servers: list[ServerProcess] = []

    def start(**settings: str) -> ServerProcess:
        env = {"FLOWAGG_PARTITIONS": "4", "FLOWAGG_LOG_LEVEL": "warning", **settings}
        server = ServerProcess([*WAITRESS, "--threads=4", "wsgi:app"], env)
        servers.append(server)
        return server.wait_serving()

    yield start
    for server in servers:
        server.stop()


def post(server: ServerProcess, records: list[dict]) -> None:
    status, body = server.request("POST", "/flows", json.dumps(records))
    assert (status, body) == (200, {"accepted": len(records)})


def traffic(hours: range, seed: int = 7) -> list[dict]:
    """Flows from every app to four of them in every hour; larger apps send more."""
    rng = random.Random(seed)
    return [
        flow(src, dest, rng.choice(VPCS), rng.randrange(10**6) * (i + 1), rng.randrange(10**5), h)
        for h in hours
        for i, src in enumerate(APPS)
        for dest in APPS[:4]
    ]


def test_table_and_chart_follow_the_range_the_filters_and_the_grouping(
    start_service, browser, tmp_path
):
    server = start_service()
    records = traffic(range(FIRST_HOUR, FIRST_HOUR + 30))
    post(server, records)
    tab = PageUnderTest(browser, server)
    page = tab.open()

    # The newest 24 hours held, shown as integers and as UTC date-times.
    first, last = FIRST_HOUR + 6, FIRST_HOUR + 29
    expect(page.locator("#start")).to_have_value(str(first))
    expect(page.locator("#end")).to_have_value(str(last))
    expect(page.locator("#range-time")).to_have_text(
        f"start {first} = {utc(first)} · end {last} = {utc(last)}"
    )
    expect(page.locator("#held")).to_have_text(
        f"30 hours held: {FIRST_HOUR} ({utc(FIRST_HOUR)}) to {last} ({utc(last)})"
    )
    top = expected_top(records, first, last)
    tab.expect_table(top)
    expect(page.locator("#table-title")).to_have_text(
        f"Top 10 of {top['total']['groups']} groups by src_app, dest_app, vpc_id"
        f" in hours {first} to {last}, ranked by bytes"
    )
    assert tab.bar_hours() == list(range(first, last + 1))

    # Hovering a bar shows that hour's values of each charted group and of the rest.
    by_src = ("src_app",)
    hour = FIRST_HOUR + 9
    page.locator(f'#chart g.bar[data-hour="{hour}"]').hover()
    tooltip = page.locator("#tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip.locator(".tooltip-title")).to_have_text(f"hour {hour} · {utc(hour)}")
    one_hour = expected_top(records, hour, hour, limit=1000)
    leader = top["rows"][0]  # the first group charted
    names = (leader["src_app"], leader["dest_app"], leader["vpc_id"])
    tx, rx = next(
        (
            (r["bytes_tx"], r["bytes_rx"])
            for r in one_hour["rows"]
            if tuple(r.values())[:3] == names
        ),
        (0, 0),
    )
    expect(tooltip.locator("tr").first.locator("td")).to_have_text(
        [" · ".join(names), f"{tx + rx:,}", f"tx {tx:,} · rx {rx:,}"]
    )
    hour_total = one_hour["total"]["bytes_tx"] + one_hour["total"]["bytes_rx"]
    expect(tooltip.locator("tr.sum td").nth(1)).to_have_text(f"{hour_total:,}")
    page.mouse.move(0, 0)
    expect(tooltip).to_be_hidden()

    # A new range: both the table and the chart follow.
    first, last = FIRST_HOUR + 20, FIRST_HOUR + 25
    page.locator("#start").fill(str(first))
    page.locator("#end").fill(str(last))
    page.locator("#end").press("Enter")
    tab.expect_table(expected_top(records, first, last))
    expect(page.locator("#chart g.bar")).to_have_count(6)
    assert tab.bar_hours() == list(range(first, last + 1))

    # Group by src_app only, then keep two of them: the filter reaches table, chart and legend.
    for field in ("dest_app", "vpc_id"):
        page.locator(f'input[name="by"][value="{field}"]').uncheck()
    tab.expect_table(expected_top(records, first, last, by=by_src))
    for name in ("db", "queue"):
        page.locator("#filter-src_app").fill(name)
        page.locator("#filter-src_app").press("Enter")
    expect(page.locator(".filter[data-field=src_app] .chip")).to_have_count(2)
    filtered = expected_top(records, first, last, by=by_src, filters={"src_app": ("db", "queue")})
    tab.expect_table(filtered)
    assert [r["src_app"] for r in filtered["rows"]] == ["queue", "db"]
    expect(page.locator("#legend li")).to_have_text(["queue", "db", "other"])
    assert tab.bar_hours() == list(range(first, last + 1))
    # One segment per group in every hour (both sent in each), none for the empty "other".
    assert (
        page.locator("#chart g.bar").evaluate_all(
            "bars => bars.map(bar => bar.querySelectorAll('rect.segment').length)"
        )
        == [2] * 6
    )

    # Removing the filter chip brings the other apps back.
    page.locator(".filter[data-field=src_app] .chip", has_text="db").click()
    tab.expect_table(expected_top(records, first, last, by=by_src, filters={"src_app": ("queue",)}))

    # The view is in the address, so a reload shows the same.
    page.reload()
    tab.expect_table(expected_top(records, first, last, by=by_src, filters={"src_app": ("queue",)}))
    page.locator(".filter[data-field=src_app] .chip").click()
    tab.expect_table(expected_top(records, first, last, by=by_src))
    shot = tmp_path / "page.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 10_000
    tab.check_clean()


def test_an_empty_store_says_so_until_flows_arrive(start_service, browser):
    server = start_service()
    tab = PageUnderTest(browser, server)
    page = tab.open()
    expect(page.locator("#message")).to_have_text(
        "The store holds no flows yet: POST some to /flows and they show here."
    )
    expect(page.locator("#held")).to_have_text("no hours held")
    expect(page.locator("#results")).to_be_hidden()

    records = [flow("a", "b", "v", 5, 7, 3), flow("c", "b", "v", 1, 1, 4)]
    post(server, records)
    page.locator("#refresh").click()
    tab.expect_table(expected_top(records, 3, 4))  # hours below 300,000: no date-times
    expect(page.locator("#message")).to_be_hidden()
    expect(page.locator("#range-time")).to_have_text("")
    assert tab.bar_hours() == [3, 4]
    tab.check_clean()


def test_a_failing_query_shows_the_api_error(start_service, browser):
    server = start_service(FLOWAGG_MAX_QUERY_HOURS="48", FLOWAGG_MAX_QUERY_ROWS="50")
    records = traffic(range(FIRST_HOUR, FIRST_HOUR + 2))  # 44 keys in each hour
    post(server, records)
    tab = PageUnderTest(browser, server)
    page = tab.open(f"#start={FIRST_HOUR}&end={FIRST_HOUR + 1}")
    message = page.locator("#message")
    expect(message).to_have_text(
        "GET /flows/top answered 422: the query would scan 88 key-hours, more than"
        " FLOWAGG_MAX_QUERY_ROWS=50; narrow the range"
    )
    expect(page.locator("#results")).to_be_hidden()

    page.locator("#start").fill(str(FIRST_HOUR + 1))
    page.locator("#end").fill(str(FIRST_HOUR + 1))
    page.locator("#end").press("Enter")
    tab.expect_table(expected_top(records, FIRST_HOUR + 1, FIRST_HOUR + 1))
    expect(message).to_be_hidden()

    for start, error in [
        ("yesterday", "query parameter 'start' must be a non-negative integer, got 'yesterday'"),
        (
            str(FIRST_HOUR - 100),
            f"query parameter 'end': hours {FIRST_HOUR - 100} to {FIRST_HOUR + 1} are 102 hours,"
            " more than FLOWAGG_MAX_QUERY_HOURS=48",
        ),
    ]:
        page.locator("#start").fill(start)
        page.locator("#start").press("Enter")
        expect(message).to_have_text(f"GET /flows/top answered 400: {error}")
        expect(page.locator("#results")).to_be_hidden()
    tab.check_clean()


def test_auto_refresh_every_10_seconds_while_on(start_service, browser):
    server = start_service()
    records = [flow("a", "b", "v", 1, 1, 5)]
    post(server, records)
    tab = PageUnderTest(browser, server)
    tab.page.clock.install()  # the page's timers run when the test says so
    page = tab.open()
    tab.expect_table(expected_top(records, 5, 5))

    page.locator("#auto").check()
    records.append(flow("b", "b", "v", 10, 10, 6))  # a new newest hour: the range follows
    post(server, records[-1:])
    page.clock.run_for(9_000)
    tab.expect_table(expected_top(records[:1], 5, 5))
    page.clock.run_for(1_000)
    tab.expect_table(expected_top(records, 5, 6))
    assert tab.bar_hours() == [5, 6]

    page.locator("#auto").uncheck()
    asked = sum("flows/top" in url for url in tab.requests)
    post(server, [flow("c", "b", "v", 100, 100, 6)])
    page.clock.run_for(30_000)
    page.evaluate("() => document.title")  # a round trip: any request made is reported by now
    assert sum("flows/top" in url for url in tab.requests) == asked
    tab.expect_table(expected_top(records, 5, 6))
    tab.check_clean()


def test_names_are_text_and_big_numbers_exact(start_service, browser):
    server = start_service()
    markup = '<img src="x" onerror="document.title=1"> & <b>bold</b>'
    int64_max = 2**63 - 1
    records = [flow(markup, "d", "v", int64_max, 1, 9)] * 3 + [flow("small", "d", "v", 1, 2, 9)]
    last_hour = [flow("late", "d", "v", 5, 5, int64_max)]
    post(server, records + last_hour)
    tab = PageUnderTest(browser, server)
    page = tab.open("#by=src_app")

    # Hours past 2**53 stay exact, and past the year 9999 have no date-time.
    expect(page.locator("#start")).to_have_value(str(int64_max - 23))
    expect(page.locator("#end")).to_have_value(str(int64_max))
    tab.expect_table(expected_top(last_hour, int64_max - 23, int64_max, by=("src_app",)))
    assert tab.bar_hours()[-1] == int64_max and len(tab.bar_hours()) == 24
    expect(page.locator("#range-time")).to_have_text("")

    # Counters past 2**64 show every digit; names that look like markup are text.
    page.locator("#start").fill("9")
    page.locator("#end").fill("9")
    page.locator("#end").press("Enter")
    top = expected_top(records, 9, 9, by=("src_app",))
    tab.expect_table(top)
    assert top["rows"][0]["bytes_tx"] == 3 * int64_max > 2**64
    assert re.search(r"\b27,670,116,110,564,327,421\b", page.locator("#top").inner_text())
    assert page.locator("#top img, #top b, #legend img, #legend b").count() == 0
    expect(page.locator("#legend li").first).to_have_text(markup)
    assert page.title() == "flowagg · top talkers"
    tab.check_clean()


def test_the_page_is_served_with_its_policy_and_revalidated(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b'<script src="page.js" defer></script>' in page.data
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert page.headers["Cache-Control"] == "no-cache"
    again = client.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert (again.status_code, again.data) == (304, b"")
    for path, mimetype in (("/page.js", "text/javascript"), ("/page.css", "text/css")):
        response = client.get(path)
        assert (response.status_code, response.mimetype) == (200, mimetype)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert len(response.data) > 1000
