"""qnode shared plumbing: bus codec and topics, configuration helpers, the CLI on top.

Modules here (other than ``cli``, ``perf`` and ``node``/``link`` launchers) import none of the
five packages ``drivers``, ``hal``, ``pipeline``, ``controller``, ``sim_hw``.
"""

__version__ = "0.1.0"
