"""The node's state as a tree shaped like ETSI GS QKD 015 ``etsi-qkd-sdn-node``, and its alarms.

Filled from the node's telemetry (forwarding stratum -> ``qkd_links``/``qkd_interfaces``), the
key pool (service stratum -> ``qkd_applications``) and the controller itself (pause, alarms).
Identity values are module-qualified as clients send them (``etsi-qkd-node-types:PHYS``);
the status names follow the YANG identities listed in the reference (§2.2). Nothing here holds
key material.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

NS = "etsi-qkd-node-types"
_NODE_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qnode:node")

# Telemetry field aliases -> our canonical names (the node's docs/telemetry.md names first).
ALIASES: dict[str, tuple[str, ...]] = {
    "qber": ("qber", "qber_z", "e_z"),
    "skr_bps": ("skr_bps", "secret_key_rate_bps", "skr"),
    "sifted_bps": ("sifted_bps", "sifted_rate_bps"),
    "f": ("f", "efficiency"),
    "fer": ("fer", "frame_error_rate"),
}


def _number(value: Any) -> bool:
    """A finite int or float, not a bool (NaN and infinity are not measurements)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def node_uuid(name: str) -> str:
    """Stable UUID of a node from its name (015 wants UUIDs, our config uses names)."""
    return str(uuid.uuid5(_NODE_NS, name))


def link_uuid(node_a: str, node_b: str) -> str:
    """Stable UUID of the link between two nodes, the same seen from either end."""
    a, b = sorted((node_a, node_b))
    return str(uuid.uuid5(_NODE_NS, f"link:{a}:{b}"))


@dataclass
class Alarm:
    name: str
    active: bool = False
    message: str = ""
    since_ns: int = 0
    count: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "alarm": self.name,
            "active": self.active,
            "message": self.message,
            "since_ns": self.since_ns,
            "count": self.count,
        }


ALARM_NAMES = ("qber_high", "pool_low", "instrument_fault", "peer_lost", "node_silent")


@dataclass
class NodeState:
    """Everything the controller knows about its node (latest values, counters, alarms)."""

    node: str
    role: str
    peer: str
    local_saes: list[str] = field(default_factory=list)
    peer_saes: list[str] = field(default_factory=list)
    link_status: str = "PENDING"  # ACTIVE | PASSIVE | PENDING | OFF
    paused: bool = False
    paused_by_loop: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    instruments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool: dict[str, int] = field(default_factory=dict)
    stored_keys: int = 0
    key_size: int = 256
    capacity_keys: int = 0
    consumed: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    alarms: dict[str, Alarm] = field(default_factory=lambda: {n: Alarm(n) for n in ALARM_NAMES})
    telemetry_received: int = 0
    telemetry_gaps: int = 0
    telemetry_malformed: int = 0
    last_telemetry_ns: int = 0
    blocks_seen: int = 0
    commands: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    started_ns: int = field(default_factory=time.time_ns)

    # -- updates -----------------------------------------------------------------------------
    def set_alarm(self, name: str, active: bool, message: str = "") -> bool:
        """Set an alarm; True if its state changed (the caller publishes the change)."""
        alarm = self.alarms.setdefault(name, Alarm(name))
        if alarm.active == active:
            if active:
                alarm.message = message
            return False
        alarm.active = active
        if message or active:  # a clear without a reason keeps the last raise's message
            alarm.message = message
        alarm.since_ns = time.time_ns()
        if active:
            alarm.count += 1
        return True

    def absorb(self, obj: str, payload: dict[str, Any]) -> None:
        """Fold one telemetry payload into the latest values (unknown fields are ignored).

        A field sent as null is an explicit *unknown* (e.g. a block's ``qber`` when no LDPC frame
        decoded, docs/telemetry.md): the value is dropped, not kept from an earlier message, so
        the state tree and Prometheus omit it instead of showing a stale or placeholder number.
        For the canonical names the first alias the payload carries decides."""
        for canonical, names in ALIASES.items():
            for name in names:
                if name not in payload:
                    continue
                value = payload[name]
                if value is None:
                    self.metrics.pop(canonical, None)
                elif _number(value):
                    self.metrics[canonical] = float(value)
                else:
                    continue  # not a value (a string, NaN): try the next alias
                break
        for name, value in payload.items():
            if value is None:
                self.metrics.pop(f"{obj}.{name}", None)
            elif _number(value):
                self.metrics[f"{obj}.{name}"] = float(value)
        if obj.startswith("instrument") or "instrument" in payload:
            inst = str(payload.get("instrument") or obj.split("/")[-1] or "instrument")
            self.instruments[inst] = {
                "state": str(payload.get("state", "ok")),
                "fault": payload.get("fault") or None,
            }

    # -- views -------------------------------------------------------------------------------
    def _perf(self) -> dict[str, Any]:
        skr = self.metrics.get("skr_bps", 0.0)
        consumed_bps = self.metrics.get("kms.consumed_bps", 0.0)
        perf: dict[str, Any] = {
            "skr": int(skr),
            "eskr": int(max(skr - consumed_bps, 0.0)),
            "expected_consumption": int(consumed_bps),
            "phys_perf": [],
        }
        if "qber" in self.metrics:
            perf["phys_perf"].append({"perf_type": f"{NS}:QBER", "value": self.metrics["qber"]})
        return perf

    def tree(self) -> dict[str, Any]:
        """The ``qkd_node`` container (RESTCONF JSON, read-only)."""
        local_id, remote_id = node_uuid(self.node), node_uuid(self.peer)
        link_id = link_uuid(self.node, self.peer)
        apps = []
        for master in self.local_saes:
            for slave in self.peer_saes:
                keys, bits = self.consumed.get((master, slave), [0, 0])
                apps.append(self._app(master, slave, bits, link_id, local_id, remote_id))
        for slave in self.local_saes:
            for master in self.peer_saes:
                keys, bits = self.consumed.get((master, slave), [0, 0])
                apps.append(self._app(master, slave, bits, link_id, local_id, remote_id))
        fault = any(i.get("fault") for i in self.instruments.values())
        return {
            "qkdn_id": local_id,
            "qkdn_status": f"{NS}:OPERATING" if self.last_telemetry_ns else f"{NS}:NEW",
            "qkdn_version": "qnode-0.1",
            "qkdn_location_id": self.node,
            "qkdn_capabilities": {
                "link_stats_support": True,
                "application_stats_support": True,
                "key_relay_mode_enable": False,
            },
            "qkd_applications": {"qkd_app": apps},
            "qkd_interfaces": {
                "qkd_interface": [
                    {
                        "qkdi_id": 1,
                        "qkdi_model": "qnode-sim" if not self.instruments else "qnode",
                        "qkdi_type": f"{NS}:DV-QKD",
                        "qkdi_capabilities": {
                            "role_support": f"{NS}:"
                            + ("TRANSMITTER" if self.role == "alice" else "RECEIVER")
                        },
                        "qkdi_status": f"{NS}:" + ("FAILURE" if fault else "UP"),
                    }
                ]
            },
            "qkd_links": {
                "qkd_link": [
                    {
                        "qkdl_id": link_id,
                        "qkdl_enable": not self.paused,
                        "qkdl_status": f"{NS}:{'PASSIVE' if self.paused else self.link_status}",
                        "qkdl_local": {"qkdn_id": local_id, "qkdi_id": 1},
                        "qkdl_remote": {"qkdn_id": remote_id, "qkdi_id": 1},
                        "qkdl_type": f"{NS}:PHYS",
                        "phys_qkd_role": f"{NS}:"
                        + ("TRANSMITTER" if self.role == "alice" else "RECEIVER"),
                        "qkdl_applications": [a["app_id"] for a in apps],
                        "qkdl_performance": self._perf(),
                    }
                ]
            },
        }

    def _app(
        self, master: str, slave: str, bits: int, link_id: str, local: str, remote: str
    ) -> dict[str, Any]:
        return {
            "app_id": str(uuid.uuid5(_NODE_NS, f"app:{master}:{slave}")),
            "app_status": f"{NS}:ON",
            "app_type": f"{NS}:CLIENT",
            "server_app_id": master,
            "client_app_id": [slave],
            "app_statistics": {
                "statistics": [
                    {
                        "start_time": _iso(self.started_ns),
                        "end_time": _iso(time.time_ns()),
                        "consumed_bits": bits,
                    }
                ]
            },
            "backing_qkdl_id": [link_id],
            "local_qkdn_id": local,
            "remote_qkdn_id": remote,
        }

    def summary(self) -> dict[str, Any]:
        """Compact state for the ``state`` command and the ready/summary views."""
        return {
            "node": self.node,
            "role": self.role,
            "link_status": self.link_status,
            "paused": self.paused,
            "paused_by_loop": self.paused_by_loop,
            "metrics": {k: v for k, v in self.metrics.items() if "." not in k},
            "stored_keys": self.stored_keys,
            "pool": dict(self.pool),
            "alarms": [a.as_dict() for a in self.alarms.values() if a.active],
            "telemetry": {
                "received": self.telemetry_received,
                "gaps": self.telemetry_gaps,
                "malformed": self.telemetry_malformed,
            },
            "blocks_seen": self.blocks_seen,
        }


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
