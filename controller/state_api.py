"""Read-only views of the node state: RESTCONF-like JSON and Prometheus ``/metrics``.

``GET /restconf/data/etsi-qkd-sdn-node:qkd_node`` returns the whole QKD 015 tree; deeper paths
walk it (``.../qkd_links/qkd_link=<qkdl_id>/qkdl_performance``), RFC 8040 style. Metric names
follow the Prometheus conventions in the reference (§6.3): prefix ``qkd_``, base units, counters
ending in ``_total``, no key IDs as labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controller.state import NodeState

ROOT = "etsi-qkd-sdn-node:qkd_node"
YANG_JSON = "application/yang-data+json"


class StateCollector:
    """Prometheus collector that reads the NodeState on every scrape (no duplicated state)."""

    def __init__(self, state: NodeState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        node = {"node": s.node}
        link = {"node": s.node, "link": "-".join(sorted((s.node, s.peer)))}

        def gauge(name: str, doc: str, value: float, labels: dict[str, str]) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=list(labels))
            g.add_metric(list(labels.values()), value)
            return g

        def counter(name: str, doc: str, value: float, labels: dict[str, str]) -> Metric:
            c = CounterMetricFamily(name, doc, labels=list(labels))
            c.add_metric(list(labels.values()), value)
            return c

        m = s.metrics
        skr = m.get("skr_bps", 0.0)
        consumed_bps = m.get("kms.consumed_bps", 0.0)
        yield gauge(
            "qkd_link_secret_key_rate_bits_per_second",
            "Secret key rate (QKD 015 qkdl_performance/skr), bits/s.",
            skr,
            link,
        )
        yield gauge(
            "qkd_link_effective_secret_key_rate_bits_per_second",
            "Secret key rate minus key consumption (015 eskr), bits/s.",
            max(skr - consumed_bps, 0.0),
            link,
        )
        yield gauge(
            "qkd_link_expected_consumption_bits_per_second",
            "Key consumption by applications (015 expected_consumption), bits/s.",
            consumed_bps,
            link,
        )
        if "qber" in m:
            yield gauge("qkd_link_qber_ratio", "Latest QBER estimate (0-1).", m["qber"], link)
        if "sifted_bps" in m:
            yield gauge(
                "qkd_link_sifted_bits_per_second", "Sifted key rate, bits/s.", m["sifted_bps"], link
            )
        if "f" in m:
            yield gauge("qkd_link_reconciliation_efficiency_ratio", "Efficiency f.", m["f"], link)
        yield gauge(
            "qkd_link_up",
            "1 if the link is producing keys (not paused, telemetry flowing).",
            1.0 if s.link_status == "ACTIVE" and not s.paused else 0.0,
            link,
        )
        yield gauge("qkd_link_paused", "1 if key production is paused.", float(s.paused), link)
        yield gauge(
            "qkd_keystore_stored_keys",
            f"Keys of the default size ({s.key_size} bits) this KME can still issue.",
            s.stored_keys,
            node,
        )
        yield gauge(
            "qkd_keystore_capacity_keys", "Advertised max_key_count.", s.capacity_keys, node
        )
        yield gauge(
            "qkd_keystore_committed_blocks",
            "Committed key blocks in the node's key store.",
            s.pool.get("committed_blocks", 0),
            node,
        )
        yield gauge(
            "qkd_keystore_committed_bytes",
            "Key material in committed blocks, bytes.",
            s.pool.get("committed_bytes", 0),
            node,
        )
        apps = CounterMetricFamily(
            "qkd_app_consumed_bytes",
            "Key material delivered by this KME per SAE pair, bytes.",
            labels=["node", "app"],
        )
        for (master, slave), (_, bits) in sorted(s.consumed.items()):
            apps.add_metric([s.node, f"{master}->{slave}"], bits / 8)
        yield apps
        yield counter(
            "qkd_kms_keys_issued", "Keys issued to master SAEs.", s.pool.get("issued_keys", 0), node
        )
        yield counter(
            "qkd_kms_keys_delivered",
            "Keys delivered to slave SAEs.",
            s.pool.get("delivered_keys", 0),
            node,
        )
        alarms = GaugeMetricFamily(
            "qkd_alarm_active", "1 while the alarm is raised.", labels=["node", "alarm"]
        )
        for alarm in s.alarms.values():
            alarms.add_metric([s.node, alarm.name], float(alarm.active))
        yield alarms
        yield counter(
            "qkd_telemetry_messages",
            "Telemetry messages received from the node.",
            s.telemetry_received,
            node,
        )
        yield counter(
            "qkd_telemetry_gaps", "Telemetry messages lost (sequence gaps).", s.telemetry_gaps, node
        )
        yield counter(
            "qkd_telemetry_malformed",
            "Malformed telemetry messages dropped.",
            s.telemetry_malformed,
            node,
        )
        cmds = CounterMetricFamily(
            "qkd_control_commands", "Control commands handled.", labels=["node", "result"]
        )
        for result, count in s.commands.items():
            cmds.add_metric([s.node, result], count)
        yield cmds


def _walk(tree: Any, parts: list[str]) -> Any:
    """Follow RESTCONF path segments (``name`` or ``list=key``) into the tree."""
    node = tree
    for part in parts:
        name, _, key = part.partition("=")
        if not isinstance(node, dict) or name not in node:
            raise KeyError(part)
        node = node[name]
        if key:
            if not isinstance(node, list):
                raise KeyError(part)
            matches = [
                item
                for item in node
                if isinstance(item, dict) and key in {str(v) for v in item.values()}
            ]
            if not matches:
                raise KeyError(part)
            node = matches[0]
    return node


def create_state_app(state: NodeState) -> FastAPI:
    """Plain-HTTP app: the QKD 015 tree, alarms and Prometheus metrics (all GET, read-only)."""
    app = FastAPI(
        title=f"qnode controller {state.node}: node state (ETSI GS QKD 015 shaped)",
        description="Read-only RESTCONF-like view of etsi-qkd-sdn-node and Prometheus metrics.",
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))  # type: ignore[arg-type]

    @app.get(f"/restconf/data/{ROOT}")
    def qkd_node() -> JSONResponse:
        """The whole ``qkd_node`` container."""
        return JSONResponse({ROOT: state.tree()}, media_type=YANG_JSON)

    @app.get(f"/restconf/data/{ROOT}/{{path:path}}")
    def qkd_node_path(path: str) -> JSONResponse:
        """A subtree, e.g. ``qkd_links/qkd_link=<qkdl_id>/qkdl_performance``."""
        parts = [p for p in path.split("/") if p]
        try:
            value = _walk(state.tree(), parts)
        except KeyError:
            raise HTTPException(404, f"no such node: {path}") from None
        leaf = parts[-1].partition("=")[0] if parts else ROOT
        return JSONResponse({f"etsi-qkd-sdn-node:{leaf}": value}, media_type=YANG_JSON)

    @app.get("/alarms")
    def alarms() -> dict[str, Any]:
        """All alarms with their state."""
        return {"alarms": [a.as_dict() for a in state.alarms.values()]}

    @app.get("/state")
    def summary() -> dict[str, Any]:
        """Compact summary (the same as the ``state`` control command)."""
        return state.summary()

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition format 0.0.4."""
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app
