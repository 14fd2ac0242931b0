"""Hardware abstraction layer: instrument roles, bench files, Bob's events, Alice's symbols.

What the node runtime calls::

    from hal.bench import Bench
    from hal.receiver import BobReceiver, alice_symbols, timing_from_config

    bench = Bench.load("bench.toml").open()   # or a bundled name: "sim_bob"; starts/attaches
                                              # the simulated world when the bench says so
    # Bob
    bench.tagger.start()
    rx = BobReceiver(bench.tagger, timing_from_config(bench.config))
    frame = rx.next_frame()                   # hal.events.Frame: index, frame_slots,
    ev = frame.events                         # events.slot/basis/bit/detector/double (numpy)
    # Alice (slots as reported by Bob)
    sym = alice_symbols(bench.transmitter, ev.slot)   # {"basis", "bit", "intensity"}
    bench.close()

Roles (``hal.interfaces``): ``Transmitter``, ``Attenuator``, ``Detector``, ``TimeTagger``;
implementations over the drivers and the registered driver names are in ``hal.roles``.
Delay calibration: ``hal.calibrate.calibrate_delay``. Technician commands: ``hal.cli``.
"""
