"""A man-in-the-middle proxy for the classical channel (test helper, real ZeroMQ sockets).

The connecting node talks to the proxy's ROUTER; the proxy talks to the binding node through a
DEALER. ``attack(direction, index, action)`` schedules an action on the index-th stage message
(``kind == "msg"``) travelling in that direction: ``flip`` a bit of the body, ``truncate`` the
body, ``drop_tag`` (a frame short), ``drop`` the message, ``replay`` it once more later,
``reorder`` it with the next one.
"""

from __future__ import annotations

import threading

import zmq

from qnode.codec import unpackb


class MitmProxy:
    def __init__(self, upstream: str, context: zmq.Context) -> None:
        self._ctx = context
        self.front = context.socket(zmq.ROUTER)
        self.front.linger = 0
        port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.back = context.socket(zmq.DEALER)
        self.back.linger = 0
        self.back.connect(upstream)
        self.identity: bytes | None = None
        self.attacks: dict[tuple[str, int], str] = {}
        self.type_attacks: dict[tuple[str, str], str] = {}
        self.counts = {"up": 0, "down": 0}
        self.done: list[tuple[str, int, str]] = []
        self.done_types: list[tuple[str, str, str]] = []
        self._held: dict[str, list[bytes] | None] = {"up": None, "down": None}
        self._replay_later: dict[str, list[bytes] | None] = {"up": None, "down": None}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def attack_type(self, direction: str, msg_type: str, action: str) -> None:
        """Schedule ``action`` on the next stage message of type ``msg_type``."""
        self.type_attacks[(direction, msg_type)] = action

    def attack(self, direction: str, index: int, action: str) -> None:
        """direction "up" = connector -> binder, "down" = binder -> connector."""
        self.attacks[(direction, index)] = action

    def _forward(self, direction: str, frames: list[bytes]) -> None:
        if direction == "up":
            self.back.send_multipart(frames)
        elif self.identity is not None:
            self.front.send_multipart([self.identity, *frames])

    def _process(self, direction: str, frames: list[bytes]) -> None:
        try:
            kind = unpackb(frames[0]).get("kind")
        except Exception:
            kind = None
        if kind != "msg":
            self._forward(direction, frames)
            return
        index = self.counts[direction]
        self.counts[direction] += 1
        action = self.attacks.pop((direction, index), None)
        if action is None and self.type_attacks:
            try:
                body_type = unpackb(frames[1]).get("type")
            except Exception:
                body_type = None
            action = self.type_attacks.pop((direction, body_type), None)
            if action:
                self.done_types.append((direction, body_type, action))
        held = self._held[direction]
        if action:
            self.done.append((direction, index, action))
        if action == "flip":
            body = bytearray(frames[1])
            body[len(body) // 2] ^= 0x01
            frames = [frames[0], bytes(body), frames[2]]
        elif action == "truncate":
            frames = [frames[0], frames[1][:-1], frames[2]]
        elif action == "drop_tag":
            frames = frames[:2]
        elif action == "drop":
            return
        elif action == "replay":
            self._replay_later[direction] = frames
        elif action == "reorder":
            self._held[direction] = frames
            return
        self._forward(direction, frames)
        if held is not None:
            self._held[direction] = None
            self._forward(direction, held)
        later = self._replay_later[direction]
        if later is not None and later is not frames:
            self._replay_later[direction] = None
            self._forward(direction, later)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = poller.poll(50)
            except (zmq.ZMQError, AttributeError):
                return  # the test tore the context down under the poller
            try:
                for sock, _ in ready:
                    frames = sock.recv_multipart()
                    if sock is self.front:
                        self.identity = frames[0]
                        self._process("up", frames[1:])
                    else:
                        self._process("down", frames)
            except (zmq.ZMQError, AttributeError):
                return  # the test tore the context down under the poller
        self.front.close(0)
        self.back.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
