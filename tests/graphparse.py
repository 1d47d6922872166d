"""Read `netapply graph` output back as objects, through Graphviz itself
(`dot -Tjson0`): nodes by id, edges by their ends, clusters with their nodes."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Parsed:
    nodes: dict[str, dict[str, str]]  # node id -> attributes
    edges: dict[tuple[str, str], dict[str, str]]  # (tail id, head id) -> attributes
    clusters: dict[str, set[str]]  # cluster name -> ids of its nodes
    cluster_labels: dict[str, str]
    label: str  # the graph's title

    def lines(self, node_or_edge: str | tuple[str, str]) -> list[str]:
        """The label's lines."""
        attrs = self.nodes[node_or_edge] if isinstance(node_or_edge, str) else \
            self.edges[node_or_edge]
        return attrs["label"].split("\\n")

    def of_kind(self, kind: str) -> set[str]:
        return {n for n in self.nodes if n.startswith(kind + "/")}


def parse(dot_text: str) -> Parsed:
    done = subprocess.run(["dot", "-Tjson0"], input=dot_text, capture_output=True, text=True,
                          check=True)
    doc = json.loads(done.stdout)
    objects = doc.get("objects", [])
    by_gvid = {o["_gvid"]: o for o in objects}
    nodes = {o["name"]: o for o in objects if "nodes" not in o}
    clusters = {o["name"]: {by_gvid[i]["name"] for i in o.get("nodes", [])}
                for o in objects if "nodes" in o}
    labels = {o["name"]: o.get("label", "") for o in objects if "nodes" in o}
    edges = {(by_gvid[e["tail"]]["name"], by_gvid[e["head"]]["name"]): e
             for e in doc.get("edges", [])}
    return Parsed(nodes, edges, clusters, labels, doc.get("label", ""))
