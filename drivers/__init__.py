"""Instrument drivers over real transports (pyvisa-py TCPIP SOCKET, pyserial for serial lines).

- ``errors``: named exceptions carrying device and command (docs/contracts.md §3);
- ``adapter`` / ``transports``: one locked, logged connection per instrument, reconnects;
- ``instrument``: driver base classes and declarative properties;
- one module per family: ``pulse_source``, ``keysight_8156a``, ``spad``, ``time_tagger``;
- ``protocol``: ordered (sent, reply) pairs for protocol tests; ``perf``: ``qnode perf`` rows.
"""
