"""Loopback TCP ports chosen before the process that binds them starts.

A port found by binding port 0 and closing the socket comes from the kernel's ephemeral range,
so any socket that binds port 0 (or connects out) in the meantime may be handed the same port:
under load a launcher saw "Address already in use". Ports chosen here lie below the ephemeral
range (``/proc/sys/net/ipv4/ip_local_port_range``), which the kernel never hands out by itself,
and are checked to be free when chosen.
"""

from __future__ import annotations

import random
import socket

_LOW = 20000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now and outside the kernel's ephemeral range."""
    high = _ephemeral_low() - 1
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(_LOW, high) if high > _LOW else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free TCP port on {host} in {_LOW}-{high}")
