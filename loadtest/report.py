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
    "post1000": "POST 1,000 flows, 1 hour",
    "post1000x2": "POST 1,000 flows, 2 hours",
    "post1000x24": "POST 1,000 flows, 24 hours",
    "get10k": "GET 10,000-key hour",
    "mixed": "mixed 95/5, RYW checked",
}


def title(case: str) -> str:
    """ "post1@16" -> "POST 1 flow, 16 conn." """
    scenario, _, connections = case.partition("@")
    return f"{SCENARIO_TITLES[scenario]}, {connections} conn."


def cases(opts) -> list[str]:
    return [f"{s}@{c}" for s in opts.scenarios for c in opts.connections]


def report(results: Results, opts) -> str:
    lines = [
        f"{opts.rounds} rounds x {opts.duration} s per scenario, driver {opts.driver}"
        f" ({opts.wrk_threads} thread), waitress --threads={opts.threads}, the service with its"
        " request lines written to a file; each figure: median (min–max) over rounds.",
        "",
        "| scenario | server | req/s | flows/s | p50 ms | p99 ms | errors | peak RSS MiB"
        " | server CPU, cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in cases(opts):
        for server in opts.servers:
            if not results.values(server, scenario, "req_s"):
                continue

            def v(key: str, server: str = server, scenario: str = scenario) -> list[float]:
                return results.values(server, scenario, key)

            flows = spread(v("flows_s")) if not scenario.startswith("get10k") else "–"
            lines.append(
                f"| {title(scenario)} | {server} | {spread(v('req_s'))}"
                f" | {flows} | {spread(v('p50_ms'), '.1f')}"
                f" | {spread(v('p99_ms'), '.1f')} | {sum(v('errors')):.0f}"
                f" | {spread([x / 2**20 for x in v('rss')])} | {spread(v('cores'), '.2f')} |"
            )
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
    for name, figure, goal, met in targets(results, opts):
        lines.append(f"| {name} | {figure} | {goal} | {met} |")
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

    def ratio(case: str, key: str, den: str, goal: float, lower: bool = False) -> None:
        """service/den of ``key`` in ``case``, per round; met if >= goal (<= goal if lower)."""
        values = results.ratios(case, key, "service", den)
        if values:
            mid = statistics.median(values)
            met = "yes" if (mid <= goal if lower else mid >= goal) else "**no**"
            what = {"req_s": "req/s", "flows_s": "flows/s", "p99_ms": "p99"}[key]
            rows.append(
                (
                    f"{title(case)}: {what} service/{den}",
                    spread(values, ".2f") + "x",
                    f"{'<=' if lower else '>='} {goal}x",
                    met,
                )
            )

    for c in opts.connections:
        ratio(f"post1@{c}", "req_s", "ceiling", 0.9)
        ratio(f"post1@{c}", "p99_ms", "ceiling", 1.5, lower=True)
    for c in opts.connections:
        for scenario in ("post1000x24", "post1000"):
            ratio(f"{scenario}@{c}", "flows_s", "ceiling", 0.8)
            ratio(f"{scenario}@{c}", "flows_s", "naive", 2.0)
        ratio(f"post1000x2@{c}", "flows_s", "ceiling", 0.8)
    for c in opts.connections:
        ratio(f"get10k@{c}", "req_s", "naive", 2.0)
    if opts.compare:
        for case in cases(opts):
            key = "req_s" if case.startswith(("post1@", "get10k", "mixed")) else "flows_s"
            values = results.ratios(case, key, "service", "before")
            if values:
                rows.append((f"{title(case)}, service/before", spread(values, ".2f") + "x", "", ""))
    for c in opts.connections:
        case = f"mixed@{c}"
        violations = results.values("service", case, "violations")
        if violations:
            gets = sum(results.values("service", case, "gets"))
            total = int(sum(violations))
            rows.append(
                (
                    f"{title(case)}: read-your-writes violations",
                    f"{total} in {gets:,.0f} checked GETs",
                    "0",
                    "yes" if total == 0 else "**no**",
                )
            )
        get_p99 = results.values("service", case, "get_p99_ms")
        if get_p99:
            rows.append(
                (f"{title(case)}: GET p99 while POSTs run, ms", spread(get_p99, ".1f"), "", "")
            )
    memory = [m for m in results.memory if m["server"] == "service"]
    if memory:
        worst = max(m["bytes_per_key_hour"] for m in memory)
        per_key = spread([m["bytes_per_key_hour"] for m in memory])
        rows.append(
            (
                "memory per distinct key-hour above the idle process, bytes",
                per_key,
                "<= 100",
                "yes" if worst <= 100 else "**no**",
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
