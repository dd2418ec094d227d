"""The report: figures of every run, and the markdown tables made of them.

Each figure is the median over rounds with its min-max; ratios are taken within a round, where the
servers ran minutes apart, then summarised the same way.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Results:
    options: dict
    runs: list[dict] = field(default_factory=list)  # one per (round, server, scenario)
    memory: list[dict] = field(default_factory=list)  # one per (round, server)
    digests: dict[str, str] = field(default_factory=dict)

    def values(self, server: str, scenario: str, key: str) -> list[float]:
        return [
            r[key]
            for r in self.runs
            if r["server"] == server and r["scenario"] == scenario and r.get(key) is not None
        ]

    def ratios(self, scenario: str, key: str, num: str, den: str) -> list[float]:
        """Per round: num/den of the same scenario, both measured in that round."""
        by_round: dict[int, dict[str, float]] = {}
        for r in self.runs:
            if r["scenario"] == scenario and r["server"] in (num, den):
                by_round.setdefault(r["round"], {})[r["server"]] = r[key]
        return [v[num] / v[den] for v in by_round.values() if num in v and den in v and v[den]]


def spread(values: list[float], fmt: str = ",.0f") -> str:
    if not values:
        return "n/a"
    mid = format(statistics.median(values), fmt)
    if len(values) == 1:
        return mid
    return f"{mid} ({format(min(values), fmt)}–{format(max(values), fmt)})"


SCENARIO_TITLES = {
    "post1": "POST 1 flow",
    "post1000": "POST 1,000 flows",
    "get10k": "GET 10,000-key hour",
    "mixed": "mixed 95/5, RYW checked",
}


def report(results: Results, opts) -> str:
    lines = [
        f"{opts.rounds} rounds x {opts.duration} s per scenario, driver {opts.driver},"
        f" {opts.connections} connections, waitress --threads={opts.threads};"
        " each figure: median (min–max) over rounds.",
        "",
        "| scenario | server | req/s | flows/s | p50 ms | p99 ms | errors | peak RSS MiB"
        " | server CPU, cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in opts.scenarios:
        for server in opts.servers:
            if not results.values(server, scenario, "req_s"):
                continue

            def v(key: str, server: str = server, scenario: str = scenario) -> list[float]:
                return results.values(server, scenario, key)

            flows = spread(v("flows_s")) if scenario != "get10k" else "–"
            lines.append(
                f"| {SCENARIO_TITLES[scenario]} | {server} | {spread(v('req_s'))}"
                f" | {flows} | {spread(v('p50_ms'), '.1f')}"
                f" | {spread(v('p99_ms'), '.1f')} | {sum(v('errors')):.0f}"
                f" | {spread([x / 2**20 for x in v('rss')])} | {spread(v('cores'), '.2f')} |"
            )
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
    for title, figure, goal, met in targets(results, opts):
        lines.append(f"| {title} | {figure} | {goal} | {met} |")
    if results.memory:
        lines += [
            "",
            "| memory | idle RSS MiB | RSS after 1 post MiB | bytes per key-hour"
            " | RSS after re-posts MiB | growth MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for server in opts.memory:
            rows = [m for m in results.memory if m["server"] == server]

            def mib(key: str, rows: list[dict] = rows) -> str:
                return spread([m[key] / 2**20 for m in rows], ".1f")

            per_key = spread([m["bytes_per_key_hour"] for m in rows])
            lines.append(
                f"| {server}, {opts.memory_keys:,} keys, then {opts.memory_reposts} re-posts"
                f" | {mib('idle')} | {mib('loaded')} | {per_key} | {mib('reposted')}"
                f" | {mib('growth')} |"
            )
    if len(set(results.digests.values())) > 1:
        lines += ["", f"WARNING: GET answers differ between servers: {results.digests}"]
    return "\n".join(lines)


def targets(results: Results, opts) -> list[tuple[str, str, str, str]]:
    rows = []

    def ratio(title: str, scenario: str, key: str, den: str, goal: float) -> None:
        values = results.ratios(scenario, key, "service", den)
        if values:
            met = "yes" if statistics.median(values) >= goal else "**no**"
            rows.append((title, spread(values, ".2f") + "x", f">= {goal}x", met))

    ratio("POST 1 flow, req/s service/ceiling", "post1", "req_s", "ceiling", 0.9)
    ratio("POST 1,000 flows, flows/s service/ceiling", "post1000", "flows_s", "ceiling", 0.8)
    ratio("POST 1,000 flows, flows/s service/naive", "post1000", "flows_s", "naive", 1.5)
    ratio("GET 10,000-key hour, req/s service/naive", "get10k", "req_s", "naive", 1.5)
    if opts.compare:
        for scenario, key in (
            ("post1", "req_s"),
            ("post1000", "flows_s"),
            ("get10k", "req_s"),
            ("mixed", "req_s"),
        ):
            values = results.ratios(scenario, key, "service", "before")
            if values:
                title = f"{SCENARIO_TITLES[scenario]}, {key[:-2]}/s service/before"
                rows.append((title, spread(values, ".2f") + "x", "(this change)", ""))
    violations = results.values("service", "mixed", "violations")
    if violations:
        gets = sum(results.values("service", "mixed", "gets"))
        total = int(sum(violations))
        rows.append(
            (
                "mixed: read-your-writes violations",
                f"{total} in {gets:,.0f} checked GETs",
                "0",
                "yes" if total == 0 else "**no**",
            )
        )
    get_p99 = results.values("service", "mixed", "get_p99_ms")
    if get_p99:
        met = "yes" if max(get_p99) < 50 else "**no**"
        rows.append(("mixed: GET p99 while POSTs run, ms", spread(get_p99, ".1f"), "< 50", met))
    memory = [m for m in results.memory if m["server"] == "service"]
    if memory:
        worst = max(m["bytes_per_key_hour"] for m in memory)
        per_key = spread([m["bytes_per_key_hour"] for m in memory])
        rows.append(
            (
                "memory per distinct key-hour, bytes",
                per_key,
                "<= 200",
                "yes" if worst <= 200 else "**no**",
            )
        )
        # Flat: re-posting the same keys grows RSS by under 5 % of what loading them took.
        growth = max(m["growth"] / (m["loaded"] - m["idle"]) for m in memory)
        rows.append(
            (
                f"RSS growth after {opts.memory_reposts} re-posts of the same keys",
                f"{growth:+.1%} of the load's RSS",
                "flat (< 5%)",
                "yes" if growth < 0.05 else "**no**",
            )
        )
    return rows
