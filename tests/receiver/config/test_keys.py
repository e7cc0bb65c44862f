"""FLUXHOOK_API_KEYS: named, scoped keys, and bare keys as before (admin)."""

from __future__ import annotations

import hashlib

import pytest

from receiver.config.env import SettingsError
from receiver.config.keys import ApiKey, Scope, parse_api_keys
from receiver.config.settings import Settings

SECRET = "k" * 16


def test_named_and_scoped_keys() -> None:
    keys = parse_api_keys(f" ci:submit:{SECRET}1 , grafana:READ:{SECRET}2,ops:admin:{SECRET}3")
    assert [(k.name, k.scope) for k in keys] == [("ci", Scope.SUBMIT), ("grafana", Scope.READ), ("ops", Scope.ADMIN)]
    assert [k.secret for k in keys] == [f"{SECRET}1", f"{SECRET}2", f"{SECRET}3"]


def test_a_bare_key_is_an_admin_named_by_its_hash() -> None:
    (key,) = parse_api_keys(SECRET)
    assert key == ApiKey("key-" + hashlib.sha256(SECRET.encode()).hexdigest()[:8], Scope.ADMIN, SECRET)
    # the same name wherever it is listed
    assert parse_api_keys(f"ci:submit:{SECRET}x,{SECRET}")[1].name == key.name


def test_a_key_may_hold_colons() -> None:
    (key,) = parse_api_keys(f"ci:submit:{SECRET}:with:colons")
    assert key.secret == f"{SECRET}:with:colons"


def test_what_each_scope_may_do() -> None:
    admin, submit, read = (ApiKey("a", scope, SECRET) for scope in (Scope.ADMIN, Scope.SUBMIT, Scope.READ))
    assert (admin.sees_all, admin.writes, admin.operates) == (True, True, True)
    assert (submit.sees_all, submit.writes, submit.operates) == (False, True, False)
    assert (read.sees_all, read.writes, read.operates) == (True, False, True)
    assert submit.owner_filter() == "a" and admin.owner_filter() is None and read.owner_filter() is None
    assert submit.may_see("a") and not submit.may_see("b") and not submit.may_see(None)


@pytest.mark.parametrize(("value", "problem"), [
    (f"ci:writer:{SECRET}", "key #1 has an unknown scope"),
    ("ci:submit:short", "key #1 is shorter than 16"),
    (f"{SECRET}1,short", "key #2 is shorter than 16"),
    (f"ci:submit:{SECRET}1,ci:read:{SECRET}2", "ci are given to more than one key"),
    (f"a:submit:{SECRET},b:read:{SECRET}", "the same key is listed twice"),
])
def test_bad_keys_name_the_variable_and_never_the_key(value: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FLUXHOOK_API_KEYS": value})
    message = str(caught.value)
    assert "FLUXHOOK_API_KEYS" in message and problem in message
    assert SECRET not in message


def test_a_bare_key_read_as_scoped_is_not_quoted_back() -> None:
    """A bare key with two colons parses as NAME:SCOPE:KEY; the error must not print its pieces."""
    with pytest.raises(SettingsError) as caught:
        parse_api_keys("Xk9aZq:Secretpart:r3st0fth3k3y")
    assert "Xk9aZq" not in str(caught.value) and "ecretpart" not in str(caught.value)


def test_keys_never_reach_a_repr() -> None:
    settings = Settings.from_env({"FLUXHOOK_API_KEYS": f"ci:submit:{SECRET}"})
    assert SECRET not in repr(settings) and SECRET not in repr(settings.integrations.api_keys)
    assert SECRET in settings.integrations.secrets()
