"""The closed QBER loop's hold and test-basis check, driven through a real controller: telemetry
on a real PUB socket, the node's command socket a real ROUTER that records what it receives.
(The loop on a real simulated link: test_closed_loop_link.py; the pause fallback for a node
that refuses ``hold``: test_node_controller.py.)"""

from __future__ import annotations

import time

import pytest
from ctl_helpers import ControllerThread, FakeNodeCommandSocket, wait_for

from controller import qber_loop
from controller.config import ConfigError, parse_config
from controller.qber_loop import aborted_block_qber, z_counts
from qnode.bus import Publisher, Subscriber

THRESHOLD = 0.05
CHECK_BITS = 1000


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setattr(qber_loop, "HOLD_RESEND_S", 0.0)
    pub = Publisher("tcp://127.0.0.1:0", "bob", "postprocess", connect=False)
    node_cmd = FakeNodeCommandSocket()
    cfg = {
        "node": "bob",
        "role": "bob",
        "keystore": str(tmp_path / "bob.db"),
        "security": {"curve": False},
        "telemetry": {"node_endpoint": pub.endpoint, "peer_lost_s": 30},
        "control": {"node_endpoint": node_cmd.endpoint, "node_timeout_ms": 20_000},
        "loop": {"qber_threshold": THRESHOLD, "qber_blocks": 2, "check_bits": CHECK_BITS,
                 "recheck_s": 0.2},
    }  # fmt: skip
    ctl = ControllerThread(cfg).start()
    wait_for(
        lambda: pub.publish("qfs/telemetry/bob/link/", {"paused": False}) and
        ctl.controller.state.telemetry_received > 0, 60, what="telemetry subscription",
    )  # fmt: skip
    yield ctl, pub, node_cmd
    ctl.stop()
    pub.close()
    node_cmd.close()


def publish_handled(pub: Publisher, state, topic: str, payloads: list[dict]) -> None:
    """Publish ``payloads`` and wait until the controller has handled them all. It counts a
    message just before handling it, and handles in order: the last is sent once more, and
    when that copy is counted every payload before it is handled (the copy changes nothing)."""
    seen = state.telemetry_received
    for payload in [*payloads, payloads[-1]]:
        pub.publish(topic, payload)
    wait_for(lambda: state.telemetry_received >= seen + len(payloads) + 1, 60, what="ingested")


def alarm_subscription(ctl: ControllerThread, pub: Publisher) -> Subscriber:
    """A subscriber to the controller's alarms, known to be connected: the node's telemetry
    toggles ``peer_lost`` until one of its alarm messages arrives (a fixed sleep may be too
    short under load, and then the alarm under test is never seen)."""
    alarms = Subscriber(ctl.endpoints["publish"], ["svc/mgmt/bob/alarm/"])

    def probe() -> bool:
        for up in (False, True):
            pub.publish("qfs/telemetry/bob/link/", {"peer_connected": up})
        return alarms.recv(timeout_ms=200) is not None

    wait_for(probe, 60, what="alarm subscription")
    return alarms


def next_alarm(alarms: Subscriber, name: str) -> dict | None:
    """The payload of the next ``name`` alarm message (others, e.g. the probe's, skipped)."""
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0:
        msg = alarms.recv(timeout_ms=int(left * 1000) + 1)
        if msg is not None and msg.topic.endswith(f"/alarm/{name}/"):
            return msg.payload
    return None


def link_summary(z: tuple[int, int, int], errors: tuple[int, int, int], holding: bool) -> dict:
    """A post-processing ``link`` payload with cumulative test-basis counts per class."""
    out: dict = {"holding": holding, "paused": False}
    for name, n, e in zip(("signal", "decoy", "vacuum"), z, errors, strict=True):
        out[f"matched_z_{name}"] = n
        out[f"qber_z_{name}"] = e / n if n else None
    return out


def test_high_blocks_hold_the_node_and_only_a_test_basis_check_resumes(node):
    ctl, pub, node_cmd = node
    state = ctl.controller.state
    alarms = alarm_subscription(ctl, pub)
    pub.publish("qfs/telemetry/bob/block/", {"block_id": "b0", "qber": 0.08})
    wait_for(lambda: state.blocks_seen == 1, 60, what="first block ingested")
    assert node_cmd.commands() == [] and not state.paused_by_loop, "one high block must not hold"
    pub.publish("qfs/telemetry/bob/block/", {"block_id": "b1", "qber": 0.09})
    wait_for(lambda: "hold" in node_cmd.commands(), 60, what="hold sent")
    assert "pause" not in node_cmd.commands(), "a node that takes hold is not paused"
    assert state.paused_by_loop and state.alarms["qber_high"].active
    raised = next_alarm(alarms, "qber_high")
    assert raised is not None and raised["active"] is True
    # A block that was in flight finishes under the threshold: measured before the hold, so
    # it decides nothing; nor does the link summary's last-block QBER.
    pub.publish("qfs/telemetry/bob/block/", {"block_id": "b2", "qber": 0.01})
    time.sleep(0.5)  # well past recheck_s: no probation resume while held either
    publish_handled(pub, state, "qfs/telemetry/bob/link/", [{"qber": 0.01, "holding": True}])
    assert state.paused_by_loop and "resume" not in node_cmd.commands()
    # The node says it is not holding (e.g. post-processing restarted): the hold is re-sent.
    pub.publish("qfs/telemetry/bob/link/", link_summary((500, 50, 5), (5, 1, 2), False))
    wait_for(lambda: node_cmd.commands().count("hold") == 2, 60, what="hold re-sent")
    # Held, test bits keep coming: the first summary opens the window, then a window of
    # >= check_bits test bits at 10 % fails the check, and one at 2 % passes it.
    held = [link_summary((900, 90, 10), (9, 1, 4), True)]
    held.append(link_summary((1400, 140, 10), (64, 6, 4), True))
    publish_handled(pub, state, "qfs/telemetry/bob/link/", held)
    assert state.paused_by_loop, "a 550-bit window is below check_bits: no decision yet"
    assert "loop_check_qber" not in state.metrics
    pub.publish("qfs/telemetry/bob/link/", link_summary((1900, 190, 10), (119, 11, 4), True))
    wait_for(lambda: "loop_check_qber" in state.metrics, 60, what="a failed check")
    assert state.metrics["loop_check_qber"] == pytest.approx(120 / 1100)
    assert state.paused_by_loop and state.alarms["qber_high"].active
    pub.publish("qfs/telemetry/bob/link/", link_summary((2900, 290, 10), (139, 13, 4), True))
    wait_for(lambda: not state.alarms["qber_high"].active, 60, what="check passed")
    assert state.metrics["loop_check_qber"] == pytest.approx(22 / 1100)
    assert not state.paused and not state.paused_by_loop
    # The alarm clears after the resume's reply or its timeout; the node may record it later.
    wait_for(lambda: node_cmd.commands()[-1] == "resume", 60, what="resume reaches the node")
    cleared = next_alarm(alarms, "qber_high")
    assert cleared is not None and cleared["active"] is False
    assert "test-basis QBER" in cleared["message"]
    alarms.close()


def test_blocks_aborted_by_the_pipeline_count_as_high(node):
    ctl, pub, node_cmd = node
    for i in range(2):
        pub.publish("qfs/telemetry/bob/block/", {"block": i, "status": "failed",
                    "reason": "QBER_Z 0.1400 above 0.11"})  # fmt: skip
    wait_for(lambda: "hold" in node_cmd.commands(), 60, what="hold after two aborted blocks")
    assert "0.1400" in ctl.controller.state.alarms["qber_high"].message


def test_z_counts_and_abort_reasons():
    payload = link_summary((123_457, 9_999, 7), (1_234, 321, 3), True)
    assert z_counts(payload) == (123_457 + 9_999 + 7, 1_234 + 321 + 3)
    assert z_counts({"matched_z_signal": 0, "qber_z_signal": None}) == (0, 0)
    assert z_counts({"qber": 0.02}) is None
    assert z_counts({"matched_z_signal": True}) is None
    # non-finite telemetry values are not counts (no OverflowError / ValueError in the loop)
    assert z_counts({"matched_z_signal": float("inf"), "qber_z_signal": 0.1}) is None
    # detections with an unknown error count: not a summary to check on (never "no errors")
    for q in (float("nan"), None, -0.5, 1.5, "0.1"):
        assert z_counts({"matched_z_signal": 10, "qber_z_signal": q}) is None, q
    assert aborted_block_qber({"status": "failed", "reason": "QBER_Z 0.1300 above 0.11"}) == 0.13
    assert aborted_block_qber({"status": "failed", "reason": "start: bad frames"}) is None
    assert aborted_block_qber({"status": "failed", "reason": "peer: QBER 0.2 > 0.11"}) == 0.2
    assert aborted_block_qber({"status": "no_key", "reason": "QBER_Z 0.2 above 0.11"}) is None
    # an unknown QBER (no LDPC frame decoded) is never passing: judged as infinite
    unknown = {"status": "no_key", "qber": None, "qber_unknown": "no LDPC frame decoded"}
    assert aborted_block_qber(unknown) == float("inf")
    assert aborted_block_qber({"status": "failed", "reason": "QBER_Z unknown: no test"}) == float(
        "inf"
    )
    assert aborted_block_qber({"status": "failed", "reason": "reset: peer lost"}) is None


def test_blocks_without_a_decoded_frame_count_as_high(node):
    """A block whose QBER is unknown (docs/telemetry.md: ``qber`` null, ``qber_unknown``) fails
    the loop like a block over the threshold, and never resets the count of high blocks."""
    ctl, pub, node_cmd = node
    state = ctl.controller.state
    unknown = {
        "status": "no_key",
        "qber": None,
        "qber_x": None,
        "f": None,
        "qber_unknown": "no LDPC frame decoded",
        "reason": "no LDPC frame decoded",
    }
    pub.publish("qfs/telemetry/bob/link/", {"qber": 0.01})  # a known value, replaced below
    wait_for(lambda: state.metrics.get("qber") == 0.01, 60, what="link qber")
    for i in range(2):
        pub.publish("qfs/telemetry/bob/block/", {"block": i, **unknown})
    wait_for(lambda: "hold" in node_cmd.commands(), 60, what="hold after two unknown blocks")
    assert "unknown" in state.alarms["qber_high"].message
    assert "qber" not in state.metrics  # unknown, not a placeholder number


def test_a_hold_from_before_a_controller_restart_is_taken_over_and_released(node, monkeypatch):
    ctl, pub, node_cmd = node
    state = ctl.controller.state
    # The "just resumed" grace must outlast a loaded machine's delays between the resume and
    # the next summary (the loop stored -ADOPT_AFTER_S at start: the take-over still applies).
    monkeypatch.setattr(qber_loop, "ADOPT_AFTER_S", 30.0)
    # A fresh controller; the node still holds (its summaries say so): alarm and checks resume.
    pub.publish("qfs/telemetry/bob/link/", link_summary((100, 10, 0), (10, 1, 0), True))
    wait_for(lambda: state.alarms["qber_high"].active, 60, what="hold taken over")
    assert state.paused_by_loop and "restart" in state.alarms["qber_high"].message
    pub.publish("qfs/telemetry/bob/link/", link_summary((200, 20, 0), (20, 2, 0), True))
    pub.publish("qfs/telemetry/bob/link/", link_summary((1200, 120, 0), (30, 3, 0), True))
    wait_for(lambda: not state.alarms["qber_high"].active, 60, what="released by a passing check")
    assert not state.paused_by_loop
    # The alarm clears after the resume's reply or its timeout; the node may record it later.
    wait_for(lambda: node_cmd.commands() == ["resume"], 60, what="resume reaches the node")
    # Right after that resume the node may still report holding: not a hold to take over.
    late = link_summary((1300, 130, 0), (31, 3, 0), True)
    publish_handled(pub, state, "qfs/telemetry/bob/link/", [late])
    assert not state.paused_by_loop and not state.alarms["qber_high"].active
    assert node_cmd.commands() == ["resume"]


@pytest.mark.parametrize("bad", [99, -1, 1.5, "many", 10**10, float("nan"), None])
def test_bad_check_bits_are_refused_by_name(tmp_path, bad):
    cfg = {"node": "bob", "role": "bob", "keystore": str(tmp_path / "bob.db"),
           "security": {"curve": False}, "loop": {"check_bits": bad}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"loop\.check_bits"):
        parse_config(cfg)
    cfg["loop"] = {"check_bits": 100}
    assert parse_config(cfg).loop.check_bits == 100
