"""Every registered driver implements its role completely, without I/O at construction."""

import inspect

import pytest

from hal.interfaces import Role
from hal.roles import REGISTRY, ROLE_OF_FIELD


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registered_roles_are_complete(name):
    impl = REGISTRY[name]
    assert not inspect.isabstract(impl), f"{name}: abstract members {impl.__abstractmethods__}"
    role = impl("TCPIP::127.0.0.1::9::SOCKET", name)  # nothing listens: must not connect
    assert isinstance(role, Role) and role.device == name
    assert not role.driver.adapter.is_open
    assert role.setting_names(), f"{name} offers no settings"
    assert any(isinstance(role, kind) for kind in ROLE_OF_FIELD.values())
