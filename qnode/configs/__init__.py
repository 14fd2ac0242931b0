"""Example node and bench configurations (TOML) for `qnode node`."""
