"""Asset backfills through a running Dagster webserver's GraphQL API (`emilia-forge backfill`).

Why GraphQL and not a dagster CLI command: `launchPartitionBackfill` with an asset selection creates the same asset
backfill as the UI's Materialize dialog. The backfill daemon turns it into runs as the asset's backfill policy says,
submits them to the run queue (QueuedRunCoordinator), and the queue launches them through the instance's run
launcher (Kubernetes in production) as the pools allow (`gpu_pods` for processed_segments). By contrast
`dagster asset materialize` and `dg launch` execute in the calling process (no queue, no launcher, no pod), and
`dagster job backfill` makes one run per partition whatever the backfill policy says.

Plain HTTP with `requests`, no dagster import: the CLI that uses it runs anywhere the webserver can be reached.
Large selections go as several backfills of at most `chunk_size` batches each (as dagster-open-platform's
scripts/backfill_partitions.py does): the daemon then works on bounded backfills, and one bad chunk does not hold
the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:3000"
URL_ENV = "DAGSTER_WEBSERVER_URL"
TOKEN_ENV = "DAGSTER_CLOUD_API_TOKEN"  # Dagster+ (dagster_cloud.yaml): sent as the Dagster-Cloud-Api-Token header
DEFAULT_CHUNK_SIZE = 500  # batches per backfill; the daemon has struggled with backfills of thousands (#16304)
KEY_PAGE = 10_000
RUN_PAGE = 1_000
# Jobs whose runs materialize an asset without naming it in the run's asset selection (sensor runs of a whole job).
ASSET_JOBS = {"processed_segments": {"emilia_job"}}
IN_PROGRESS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]


class BackfillError(RuntimeError):
    """The backfill cannot be launched as asked; the message says why and what to do."""


class UnknownPartitions(BackfillError):
    def __init__(self, asset: str, unknown: Sequence[str], url: str):
        self.unknown = list(unknown)
        shown = ", ".join(self.unknown[:20]) + (f" and {len(self.unknown) - 20} more" if len(self.unknown) > 20 else "")
        super().__init__(f"unknown batch partition(s) of {asset} on {url}: {shown} (the instance's "
                         f"`episode_batches` partitions are made by the raw-audio sensor)")


def webserver_url(url: str | None = None) -> str:
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def backfill_link(url: str, backfill_id: str) -> str:
    """The backfill's page in the UI (its runs tab)."""
    return f"{url}/runs/b/{backfill_id}?tab=runs"


@dataclass(frozen=True)
class AssetInfo:
    key: str
    location: str
    partitioned: bool
    backfill_policy: str  # the UI's words for it; none set: one run per partition
    pools: list[str]


@dataclass(frozen=True)
class InstanceInfo:
    queued: bool  # runs go through the run queue (QueuedRunCoordinator)
    backfill_daemon_healthy: bool


_ASSET = """
query EmiliaAsset($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      isPartitioned
      pools
      backfillPolicy { description }
      repository { location { name } }
    }
    ... on Error { message }
  }
}"""

_KEYS = """
query EmiliaPartitionKeys($assetKey: AssetKeyInput!, $cursor: String, $limit: Int!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      partitionKeyConnection(limit: $limit, ascending: true, cursor: $cursor) { results cursor hasMore }
    }
  }
}"""

_INSTANCE = """
query EmiliaInstance {
  instance {
    runQueuingSupported
    daemonHealth { daemonStatus(daemonType: "BACKFILL") { healthy required } }
  }
}"""

_RUNS = """
query EmiliaRunsInProgress($statuses: [RunStatus!], $cursor: String, $limit: Int) {
  runsOrError(filter: {statuses: $statuses}, cursor: $cursor, limit: $limit) {
    __typename
    ... on Runs { results { runId status jobName assetSelection { path } tags { key value } } }
    ... on Error { message }
  }
}"""

_LAUNCH = """
mutation EmiliaBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message partitionKeys }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""


def asset_path(asset: str) -> list[str]:
    """`processed_segments`, or `prefix/name` for a key with a prefix (the UI's spelling)."""
    return [p for p in asset.split("/") if p]


class DagsterWebserver:
    """A Dagster webserver's GraphQL endpoint; every failure is a `BackfillError` that names the URL."""

    def __init__(self, url: str | None = None, timeout_s: float = 120.0, token: str | None = None):
        self.url = webserver_url(url)
        self.timeout_s = timeout_s
        token = token or os.environ.get(TOKEN_ENV)
        self._headers = {"Dagster-Cloud-Api-Token": token} if token else {}

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                                 headers=self._headers, timeout=self.timeout_s)
        except requests.RequestException as err:
            raise BackfillError(f"cannot reach the Dagster webserver at {self.url} ({type(err).__name__}); start it "
                                f"(`dagster dev -w workspace.yaml`) or pass --url / set {URL_ENV}") from None
        if resp.status_code != 200:
            hint = f" (Dagster+ needs {TOKEN_ENV})" if resp.status_code in (401, 403) and not self._headers else ""
            raise BackfillError(f"{self.url}/graphql answered HTTP {resp.status_code}{hint}: {resp.text[:500]}")
        body = resp.json()
        if body.get("errors"):
            raise BackfillError(f"{self.url}/graphql: " + "; ".join(e.get("message", "?") for e in body["errors"]))
        return body["data"]

    def asset(self, asset: str) -> AssetInfo:
        node = self.graphql(_ASSET, {"assetKey": {"path": asset_path(asset)}})["assetNodeOrError"]
        if node["__typename"] != "AssetNode":
            raise BackfillError(f"asset {asset} is not in the workspace of {self.url}: {node.get('message', '')} "
                                f"(is its code location loaded? see the UI's Deployment page)")
        policy = node["backfillPolicy"]
        return AssetInfo(asset, node["repository"]["location"]["name"], node["isPartitioned"],
                         policy["description"] if policy else "none: one run per partition", list(node["pools"]))

    def partition_keys(self, asset: str) -> list[str]:
        """Every partition key of the asset, in the instance's order (dynamic partitions: the order they were
        added, which for batches is the order they were made)."""
        keys: list[str] = []
        cursor = None
        while True:
            node = self.graphql(_KEYS, {"assetKey": {"path": asset_path(asset)}, "cursor": cursor,
                                        "limit": KEY_PAGE})["assetNodeOrError"]
            page = (node or {}).get("partitionKeyConnection")
            if page is None:
                raise BackfillError(f"asset {asset} on {self.url} has no partitions")
            keys += page["results"]
            if not page["hasMore"]:
                return keys
            cursor = page["cursor"]

    def instance(self) -> InstanceInfo:
        data = self.graphql(_INSTANCE)["instance"]
        status = data["daemonHealth"]["daemonStatus"]
        return InstanceInfo(data["runQueuingSupported"], bool(status["healthy"]))

    def runs_in_progress(self, asset: str) -> dict[str, list[str]]:
        """Per partition, the runs of `asset` queued or running now ("<run id> <status>"): a batch re-run while its
        run is still going would be processed twice at once."""
        path = asset_path(asset)
        jobs = ASSET_JOBS.get(asset, set())
        out: dict[str, list[str]] = {}
        cursor = None
        while True:
            result = self.graphql(_RUNS, {"statuses": IN_PROGRESS, "cursor": cursor, "limit": RUN_PAGE})["runsOrError"]
            if result["__typename"] != "Runs":
                raise BackfillError(f"{self.url} could not list the runs in progress: {result.get('message', '')}")
            for run in result["results"]:
                tags = {t["key"]: t["value"] for t in run["tags"]}
                ours = run["jobName"] in jobs or any(k["path"] == path for k in run["assetSelection"] or [])
                if ours and "dagster/partition" in tags:
                    out.setdefault(tags["dagster/partition"], []).append(f"{run['runId']} {run['status']}")
            if len(result["results"]) < RUN_PAGE:
                return out
            cursor = result["results"][-1]["runId"]

    def launch_backfill(self, asset: str, partitions: Sequence[str], title: str,
                        tags: dict[str, str] | None = None) -> str:
        """An asset backfill of these partitions; returns its id."""
        params = {"partitionNames": list(partitions), "assetSelection": [{"path": asset_path(asset)}],
                  "title": title, "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        result = self.graphql(_LAUNCH, {"backfillParams": params})["launchPartitionBackfill"]
        if result["__typename"] == "LaunchBackfillSuccess":
            return result["backfillId"]
        if result["__typename"] == "PartitionKeysNotFoundError":
            raise UnknownPartitions(asset, result["partitionKeys"], self.url)
        raise BackfillError(f"{self.url} refused the backfill of {asset} ({result['__typename']}): "
                            f"{result.get('message', '')}")


def select_partitions(keys: Sequence[str], names: Sequence[str] = (), start: str | None = None,
                      end: str | None = None, *, asset: str = "", url: str = "") -> list[str]:
    """The chosen partitions, in the instance's order: `names` (each must exist), or the inclusive range
    `start`..`end` (either end open). Unknown names are one error naming all of them."""
    index = {k: i for i, k in enumerate(keys)}
    if names:
        if start or end:
            raise BackfillError("give batch names or a --from/--to range, not both")
        unknown = [n for n in dict.fromkeys(names) if n not in index]
        if unknown:
            raise UnknownPartitions(asset, unknown, url)
        return sorted(dict.fromkeys(names), key=index.__getitem__)
    if not (start or end):
        raise BackfillError("choose batches: names (positional or --partitions a,b) or a range --from B1 --to B2")
    unknown = [n for n in (start, end) if n and n not in index]
    if unknown:
        raise UnknownPartitions(asset, unknown, url)
    lo, hi = index[start] if start else 0, index[end] if end else len(keys) - 1
    if lo > hi:
        raise BackfillError(f"--from {start} comes after --to {end} in the instance's partition order")
    return list(keys[lo:hi + 1])


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    if size < 1:
        raise BackfillError(f"--chunk-size must be at least 1, not {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]
