"""The inventory's records (connfix.config.records): validated by pydantic, kept in
connfix's cache as plain values, and built back from there the same — without pydantic."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connfix.config import cache, records
from connfix.config.inventory import Database, Environment, Inventory, Node
from connfix.config.records import Invalid, from_plain, to_plain, validate_cached
from tests import builders
from tests.helpers import cache_entries

ROOT = Path(__file__).resolve().parents[2]

# every kind of record and field an inventory holds
FULL: dict[str, Any] = {
    "description": "everything",
    "database": {
        "dsn": "host=db1 dbname=app user=connfix",
        "password_env": "PGPASS_APP",
        "reserved_dsn": "host=db1 dbname=app user=reserved",
        "admin_dsn_env": "ADMIN_DSN",
        "connect_timeout": "3s",
        "statement_timeout": "2s",
        "nodes": [
            {"name": "pg1", "dsn": "host=10.0.0.1 dbname=app user=connfix"},
            {"name": "pg2", "dsn": "host=10.0.0.2 dbname=app", "reserved_dsn": "host=10.0.0.2"},
        ],
        "patroni": {"urls": ["http://10.0.0.1:8008/"], "timeout": "1s"},
        "log_ssh": {"address": "db1.internal", "path": "/var/log/postgresql/*.log"},
    },
    "services": [
        {"name": "web", "unit": "web.service", "pool_size": 10, "max_overflow": 5},
        {
            "name": "jobs",
            "unit": "jobs@*.service",
            "units": ["jobs-extra.service"],
            "pool_size": 2,
            "workers": 4,
            "application_name": "jobs",
            "user": "jobs",
            "restart_command": "sudo systemctl restart {unit}",
            "health_check": "curl -fsS http://127.0.0.1/health",
            "health_timeout": "2m",
        },
    ],
    "ssh": {"user": "deploy", "port": 2222, "keepalive": "30s"},
    "hosts": [
        {"name": "web1", "ssh_address": "10.0.0.11"},
        {"name": "web2", "ssh_address": "web2.internal", "db_address": "10.0.0.12"},
        {"name": "jobs1", "ssh_address": "fe80::1%eth0", "services": ["jobs"], "pool_size": 3},
    ],
    "thresholds": {"warning": 0.7, "critical": 0.9, "idle_suspect_age": "5m"},
    "protected": {"users": ["replicator"], "applications": ["pg_dump"]},
    "pgbouncer": {"admin_dsn": "host=pgb port=6432 dbname=pgbouncer", "connect_timeout": "1s"},
    "notify": [{"kind": "webhook", "url": "https://hooks.example/x", "events": ["end"]}],
    "alerts": {
        "mode": "approve",
        "caps": {"actions": ["diagnose", "end_sessions"], "max_hosts": 2},
        "approval": {"ttl": "10m", "two_person": True},
        "pagerduty_services": ["P123"],
    },
    "prometheus": {"url": "http://prom:9090/", "lookback": "2h", "connections": "sum(x)"},
    "incidents_dir": "/var/lib/connfix/incidents",
}


def inventories() -> list[Inventory]:
    from connfix.config.inventory_file import load_inventory

    return [
        load_inventory(ROOT / "inventory.example.yaml").inventory,
        Inventory.validate({"environments": {"full": FULL}}),
        Inventory.validate({"version": 1, "environments": {"a": {**FULL, "pgbouncer": None}}}),
        Inventory(environments={"b": builders.env(), "c": builders.environment()}),
    ]


@pytest.mark.parametrize("index", range(4))
def test_an_inventory_is_built_back_equal_from_its_plain_form(index: int) -> None:
    inventory = inventories()[index]
    again = from_plain(marshal.loads(marshal.dumps(to_plain(inventory))))
    assert again == inventory
    assert repr(again) == repr(inventory)  # the same classes all the way down


def test_a_record_built_back_has_the_classes_and_normalised_values_validation_gave() -> None:
    env = Inventory.validate({"environments": {"full": FULL}}).environments["full"]
    again = from_plain(to_plain(env))
    assert isinstance(again, Environment) and isinstance(again.database.nodes[0], Node)
    assert again.database.patroni is not None
    assert again.database.patroni.urls == ["http://10.0.0.1:8008"]  # as validation left it
    assert again.database.connect_timeout == 3.0 and again.service.label == "web"
    assert again.pgbouncers[0].name == "pgbouncer" and again.alerts is not None


def test_only_plain_values_and_records_have_a_plain_form() -> None:
    with pytest.raises(TypeError):
        to_plain({"when": object()})
    with pytest.raises(TypeError):
        to_plain({1: "a key that is not a string"})


@pytest.fixture
def cache_home(connfix_cache: Path) -> Path:
    return connfix_cache / "records"


def test_validated_data_is_kept_and_built_back_equal(cache_home: Path) -> None:
    data = {"environments": {"full": FULL}}
    first = validate_cached(Inventory, data)
    (entry,) = cache_entries(cache_home)
    assert validate_cached(Inventory, data) == first
    entry.write_bytes(b"not marshal")  # damaged: validated again, and kept again
    assert validate_cached(Inventory, data) == first
    assert marshal.loads(entry.read_bytes())[0] == "connfix.config.inventory:Inventory"


def test_an_entry_of_another_record_or_shape_is_validated_again(cache_home: Path) -> None:
    data = {"environments": {"full": FULL}}
    first = validate_cached(Inventory, data)
    (entry,) = cache_entries(cache_home)
    for foreign in (
        to_plain(first.environments["full"]),  # a record, of another class
        ("connfix.config.inventory:Nope", {}),  # a class that does not exist
        ("connfix.config.inventory:Inventory", {"environments": {}, "nope": 1}),
        ("builtins:object", {}),
        ["a", "list"],
    ):
        entry.write_bytes(marshal.dumps(foreign))
        assert validate_cached(Inventory, data) == first


def test_refused_data_is_never_kept(cache_home: Path) -> None:
    bad = {"environments": {"x": {**FULL, "hosts": []}}}
    for _ in range(2):
        with pytest.raises(Invalid) as caught:
            validate_cached(Inventory, bad)
        assert caught.value.errors[0]["loc"] == ("environments", "x", "hosts")
    assert cache_entries(cache_home) == []


def test_the_entry_depends_on_the_code_that_validates_it(tmp_path: Path) -> None:
    """The config package (rules, checks), the record's own module and its bases',
    pydantic and psycopg: a change to any is a new entry."""
    from connfix.actions.terminate import CancelParams

    said = records._depends(Inventory)
    assert said is not None
    for source in ("inventory.py", "records.py", "dsn.py", "pydantic", "psycopg"):
        assert source.encode() in said
    params = records._depends(CancelParams)
    assert params is not None
    for source in ("actions/terminate.py", "actions/base.py", "config/units.py"):
        assert source.encode() in params
    one = tmp_path / "one.py"
    one.write_text("x = 1\n")
    before = cache.signature([str(one)])
    os.utime(one, ns=(1, 1))
    assert cache.signature([str(one)]) != before
    assert cache.signature([str(tmp_path / "missing.py")]) is None


def test_a_second_command_builds_the_inventory_without_pydantic(tmp_path: Path) -> None:
    """In a fresh interpreter: the first load validates (pydantic imported), the second
    builds the same records from the cache (pydantic never imported); with the cache
    off it validates again."""
    (tmp_path / "inventory.yaml").write_text((ROOT / "inventory.example.yaml").read_text())
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from connfix.config.inventory_file import load_inventory\n"
        "inv = load_inventory(Path(sys.argv[1])).inventory\n"
        "print(json.dumps([repr(inv), 'pydantic' in sys.modules]))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("CONNFIX_NO_CACHE", None)

    def load(**extra: str) -> tuple[str, bool]:
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "inventory.yaml")],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        text, imported = json.loads(out)
        return text, imported

    first, second, off = load(), load(), load(CONNFIX_NO_CACHE="1")
    assert first[1] and not second[1] and off[1]
    assert first[0] == second[0] == off[0]


def test_a_record_made_by_connfix_runs_its_checks_and_data_from_outside_is_validated() -> None:
    """A direct construction runs __post_init__ (the checks across fields); the node a
    Patroni cluster names is validated like a file's."""
    with pytest.raises(ValueError, match="hands out no superuser"):
        Database(dsn="host=db", platform="rds", admin_dsn="host=db user=postgres")
    db = Database.validate({"dsn": "host=db dbname=app user=connfix"})
    node = db.node_at("pg-2", "10.0.0.2", 5433)
    assert node.name == "pg-2" and {"host=10.0.0.2", "port=5433"} <= set(node.dsn.split())
    with pytest.raises(Invalid, match="a node name is letters"):
        db.node_at("not a name; rm -rf", "10.0.0.2", 5432)


@pytest.mark.parametrize("name", ["too-many-connections", "observe"])
def test_a_shipped_runbook_and_its_params_are_built_back_equal(name: str) -> None:
    """What a runbook's validation keeps (the runbook as written, each step's typed
    params) comes back from its plain form the same."""
    from connfix.config.yamlfile import load_text
    from connfix.engine.runbook import RunbookModel, resolve_runbook

    book = resolve_runbook(name)
    for step in book.steps:
        assert from_plain(marshal.loads(marshal.dumps(to_plain(step.params)))) == step.params
    text = (ROOT / "src/connfix/engine/runbooks" / f"{name}.yaml").read_text()
    model = RunbookModel.validate(load_text(text).data)
    assert from_plain(marshal.loads(marshal.dumps(to_plain(model)))) == model


def test_every_action_s_params_are_built_back_equal() -> None:
    from connfix.actions import ACTIONS

    required = {"wait": {"duration": "5s"}}
    for name in ACTIONS:
        params = ACTIONS[name].params_model.validate(required.get(name, {}))
        again = from_plain(to_plain(params))
        assert again == params and type(again) is type(params), name


def test_a_refusal_never_quotes_the_value_refused() -> None:
    """A connection string refused for its password is named by its field, never shown."""
    with pytest.raises(Invalid) as caught:
        Database.validate({"dsn": "host=db password=hunter2", "statement_timeout": "9"})
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value.errors)
    assert str(caught.value).startswith("dsn: Value error, the connection string contains")
    assert "; statement_timeout: Value error, not a duration" in str(caught.value)


def test_a_zero_setup_environment_stays_one_when_copied(connfix_cache: Path) -> None:
    """Marked by connfix, never read from a file; its copies (a node's database, a
    host list) keep the mark, and the one from the cache is marked the same."""
    from connfix.diagnosis.zero_setup import environment_for

    first, cached = environment_for("host=db dbname=app"), environment_for("host=db dbname=app")
    assert first.zero_setup and cached.zero_setup and first == cached
    copy = first.replace(hosts=first.hosts[:1])
    assert (
        copy.zero_setup
        and not Environment.validate({**FULL, "pgbouncer": None})
        .replace(description="x")
        .zero_setup
    )
    with pytest.raises(Invalid, match="zero_setup: Unexpected keyword argument"):
        Environment.validate({**FULL, "zero_setup": True})
