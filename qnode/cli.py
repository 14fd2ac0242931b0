"""The ``qnode`` command line: one typer app; each package contributes its own sub-commands.

Sub-apps are imported lazily by name so that a broken or slow-importing package does not stop
the other commands from working (a technician at the bench still gets ``qnode instruments``).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="qnode",
    help="QKD node framework: simulated or real instruments, post-processing, key delivery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module, attribute, how it is mounted): a typer app mounted as a group, or a "register"
# function that adds top-level commands to ``app``.
_CONTRIBUTIONS: list[tuple[str, str]] = [
    ("sim_hw.cli", "register"),
    ("hal.cli", "register"),
    ("pipeline.cli", "register"),
    ("qnode.perf", "register"),
    ("qnode.node_cli", "register"),
    ("controller.cli", "register"),
]


def _load() -> None:
    for module_name, attr in _CONTRIBUTIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only tolerate the contributing module itself being absent, never a missing
            # dependency inside it (that must surface as an error).
            if exc.name == module_name:
                continue
            raise
        getattr(module, attr)(app)


def main() -> None:
    """Entry point of the ``qnode`` console script."""
    _load()
    app()


if __name__ == "__main__":
    main()
