"""Inventory loading: the example is valid; every kind of bad inventory is refused with
file, line and field, exit status 2, and nothing runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from connfix import InventoryError
from connfix.cli import cli
from connfix.config.inventory_file import (
    InventorySearch,
    find_inventory,
    load_inventory,
    resolve_environment,
)
from tests.builders import GOOD

ROOT = Path(__file__).resolve().parents[2]


SERVICES = """\
    services:
      - {name: web, unit: web.service, pool_size: 10, application_name: web}
      - {name: worker, unit: "worker@*.service", pool_size: 2, application_name: worker}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_example_inventory_is_valid() -> None:
    loaded = load_inventory(ROOT / "inventory.example.yaml")
    env = loaded.environment("prod")
    assert env.service.pool_size == 20
    assert [h.name for h in env.hosts] == ["web1", "web2"]
    assert env.hosts[1].client_addr == "10.0.1.12"
    assert env.database.has_admin
    assert env.thresholds.idle_suspect_age == 600
    assert env.ssh.command_timeout == 120
    assert env.ssh.keepalive == 15
    assert env.service.restart_argv() == "sudo -n systemctl restart webapp.service"


def test_good_minimal_inventory_gets_defaults(tmp_path: Path) -> None:
    env = load_inventory(write(tmp_path, GOOD)).environment("prod")
    assert env.thresholds.warning == 0.8
    assert env.database.statement_timeout == 5.0
    assert env.hosts[0].client_addr == "10.0.0.11"


# (name, inventory text, expected line, expected fragments of the message)
BAD = [
    (
        "unknown key",
        GOOD.replace("      pool_size: 20", "      pool_size: 20\n      pool_sise: 3"),
        9,
        ["environments.prod.service.pool_sise", "unknown field"],
    ),
    (
        "wrong type",
        GOOD.replace("pool_size: 20", "pool_size: lots"),
        8,
        ["environments.prod.service.pool_size", "integer"],
    ),
    (
        "missing required field",
        GOOD.replace("      unit: webapp.service\n", ""),
        6,
        ["environments.prod.service.unit", "required"],
    ),
    (
        "duplicate host",
        GOOD.replace("name: web2", "name: web1"),
        12,
        ["environments.prod.hosts[1].name", "duplicate host 'web1'"],
    ),
    (
        "duplicate client address",
        GOOD.replace("ssh_address: 10.0.0.12", "ssh_address: 10.0.0.11"),
        12,
        ["environments.prod.hosts[1].db_address", "10.0.0.11"],
    ),
    (
        "bad duration",
        GOOD.replace("      dsn:", "      connect_timeout: 5 minutes\n      dsn:"),
        5,
        ["environments.prod.database.connect_timeout", "not a duration"],
    ),
    (
        "duration without unit",
        GOOD.replace("      dsn:", "      statement_timeout: 5\n      dsn:"),
        5,
        ["statement_timeout", "needs a unit"],
    ),
    (
        "duration out of range",
        GOOD.replace("      dsn:", "      connect_timeout: 30d\n      dsn:"),
        5,
        ["connect_timeout", "out of range"],
    ),
    (
        "keepalive out of range",
        GOOD.replace("    hosts:\n", "    ssh:\n      keepalive: 2h\n    hosts:\n"),
        10,
        ["environments.prod.ssh.keepalive", "less than or equal to 3600"],
    ),
    (
        "YAML syntax error",
        GOOD.replace("      - name: web2", "      - name: [web2"),
        13,
        ["YAML syntax error"],
    ),
    (
        "duplicate key",
        GOOD.replace("      pool_size: 20", "      pool_size: 20\n      pool_size: 30"),
        9,
        ["duplicate key", "environments.prod.service.pool_size", "first at line 8"],
    ),
    (
        "password in dsn",
        GOOD.replace("user=connfix", "user=connfix password=hunter2"),
        5,
        ["environments.prod.database.dsn", "contains a secret (password"],
    ),
    (
        "password in URI",
        GOOD.replace(
            '"host=db1 port=5432 dbname=app user=connfix"', '"postgresql://connfix:hunter2@db1/app"'
        ),
        5,
        ["dsn", "contains a secret (password"],
    ),
    (
        "shell metacharacters in unit",
        GOOD.replace("unit: webapp.service", "unit: 'web; rm -rf /'"),
        7,
        ["environments.prod.service.unit", "not a systemd unit name"],
    ),
    (
        "object-constructing YAML tag",
        GOOD.replace("version: 1", "version: !!python/object/apply:os.system ['true']"),
        1,
        ["tag", "not allowed"],
    ),
    (
        "no hosts",
        GOOD.split("    hosts:")[0] + "    hosts: []\n",
        9,
        ["environments.prod.hosts", "at least 1"],
    ),
    (
        "bad db_address",
        GOOD.replace(
            "ssh_address: 10.0.0.12", "ssh_address: 10.0.0.12\n        db_address: web2.internal"
        ),
        14,
        ["environments.prod.hosts[1].db_address", "not an IP address"],
    ),
    (
        "thresholds out of order",
        GOOD + "    thresholds:\n      warning: 0.9\n      critical: 0.5\n",
        14,
        ["environments.prod.thresholds", "warning must not be above critical"],
    ),
    (
        "bad environment variable name",
        GOOD.replace("      dsn:", "      password_env: 'PG PASS'\n      dsn:"),
        5,
        ["environments.prod.database.password_env", "not an environment variable name"],
    ),
    (
        "unknown placeholder in restart command",
        GOOD.replace(
            "      pool_size: 20", "      pool_size: 20\n      restart_command: 'restart {host}'"
        ),
        9,
        ["restart_command", "unknown placeholder"],
    ),
    ("not a mapping", "- just\n- a list\n", 1, ["must be a mapping"]),
    ("no environments", "version: 1\nenvironments: {}\n", 2, ["environments", "at least 1"]),
    ("wrong version", GOOD.replace("version: 1", "version: 2"), 1, ["version", "only version 1"]),
    (
        "pool size zero",
        GOOD.replace("pool_size: 20", "pool_size: 0"),
        8,
        ["pool_size", "greater than or equal to 1"],
    ),
    (
        "service and services both",
        GOOD.replace("    hosts:", SERVICES + "    hosts:"),
        6,
        ["environments.prod.service", "give either service (one) or services"],
    ),
    (
        "a service of several without a name",
        GOOD.replace(
            "    service:\n      unit: webapp.service\n      pool_size: 20\n",
            SERVICES.replace("name: worker, ", ""),
        ),
        8,
        ["environments.prod.services[1]", "needs a name"],
    ),
    (
        "duplicate service name",
        GOOD.replace(
            "    service:\n      unit: webapp.service\n      pool_size: 20\n",
            SERVICES.replace("name: worker", "name: web"),
        ),
        8,
        ["environments.prod.services[1].name", "duplicate service 'web'"],
    ),
    (
        "a host naming a service that does not exist",
        GOOD.replace("ssh_address: 10.0.0.12", "ssh_address: 10.0.0.12\n        services: [jobs]"),
        14,
        ["environments.prod.hosts[1].services[0]", "no service 'jobs'"],
    ),
    (
        "negative max_overflow",
        GOOD.replace("pool_size: 20", "pool_size: 20\n      max_overflow: -1"),
        9,
        ["max_overflow", "greater than or equal to 0"],
    ),
    (
        "two nodes of one name",
        GOOD.replace(
            '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n',
            '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n'
            "      nodes:\n"
            '        - {name: db2, dsn: "host=db2 dbname=app"}\n'
            '        - {name: db2, dsn: "host=db3 dbname=app"}\n',
        ),
        6,
        ["database.nodes", "two nodes are named 'db2'"],
    ),
    (
        "a node DSN with a password",
        GOOD.replace(
            '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n',
            '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n'
            "      nodes:\n"
            '        - {name: db2, dsn: "host=db2 password=hunter2"}\n',
        ),
        7,
        ["database.nodes[0].dsn", "contains a secret"],
    ),
    (
        "a Patroni URL that is not one",
        GOOD.replace(
            '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n',
            '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n'
            "      patroni:\n"
            '        urls: ["db1:8008"]\n',
        ),
        7,
        ["database.patroni.urls", "not a Patroni REST API address"],
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_inventory_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path).environment("prod")
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "hunter2" not in message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("text", "line", "fragments"), [b[1:] for b in BAD[:6]], ids=[b[0] for b in BAD[:6]]
)
def test_bad_inventory_exits_2_and_runs_nothing(
    tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    result = CliRunner().invoke(cli, ["inventory", "check", "prod", "--inventory", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}:" in result.output
    # nothing ran: no database or host table was printed
    assert "database of" not in result.output and "hosts of" not in result.output


def test_missing_environment_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = CliRunner().invoke(cli, ["inventory", "check", "staging", "-i", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: no environment 'staging' in the inventory (environments: prod)" in (
        result.output
    )


def test_missing_inventory_file_says_where_it_looked(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["inventory", "check", "prod", "-i", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "no such inventory file (from --inventory)" in result.output


def test_lookup_order(tmp_path: Path) -> None:
    """--inventory, then CONNFIX_INVENTORY, then ./inventory.yaml, then the lab's (for
    `lab` only); the search is passed in, nothing read from the process."""
    explicit = write(tmp_path, GOOD)
    other = tmp_path / "other.yaml"
    other.write_text(GOOD)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    lab = tmp_path / "lab.yaml"
    plain = InventorySearch(None, cwd, lab)
    with pytest.raises(InventoryError, match="no inventory found: pass --inventory"):
        find_inventory(None, "prod", plain)
    with pytest.raises(InventoryError, match=f"{lab} does not exist; run `connfix lab up`"):
        find_inventory(None, "lab", plain)
    lab.write_text(GOOD)
    assert find_inventory(None, "lab", plain) == lab
    (cwd / "inventory.yaml").write_text(GOOD)
    assert find_inventory(None, "prod", plain) == cwd / "inventory.yaml"
    assert find_inventory(None, "lab", plain) == cwd / "inventory.yaml"
    with_env = InventorySearch(str(other), cwd, lab)
    assert find_inventory(None, "prod", with_env) == other
    assert find_inventory(str(explicit), "prod", with_env) == explicit


def test_lab_environment_falls_back_to_the_lab_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    (lab_dir / "inventory.yaml").write_text(GOOD.replace("  prod:", "  lab:"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "inventory.yaml").write_text(GOOD)  # has prod only
    search = InventorySearch(None, cwd, lab_dir / "inventory.yaml")
    loaded, env = resolve_environment(None, "lab", search)
    assert loaded.path == lab_dir / "inventory.yaml"
    assert env.hosts[0].name == "web1"
    os.remove(lab_dir / "inventory.yaml")
    with pytest.raises(InventoryError, match="no environment 'lab'"):
        resolve_environment(None, "lab", search)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(InventoryError, match="more than 50000 values"):
        load_inventory(path)


def test_several_services_per_host_load_with_their_hosts(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    service:\n      unit: webapp.service\n      pool_size: 20\n", SERVICES
    ).replace("ssh_address: 10.0.0.12", "ssh_address: 10.0.0.12\n        services: [web]")
    env = load_inventory(write(tmp_path, text)).environment("prod")
    assert [s.label for s in env.all_services()] == ["web", "worker"]
    assert env.service.label == "web"  # the first, for what has one service
    web1, web2 = env.hosts
    assert [s.label for s in env.services_on(web1)] == ["web", "worker"]
    assert [s.label for s in env.services_on(web2)] == ["web"]
    worker = env.owner(web1, "worker", "app")
    assert worker is not None and worker.label == "worker"
    assert env.owner(web2, "worker", "app") is None  # web2 runs no worker: no service's
    assert env.owner(web1, "pgbench", "app") is None


def test_nodes_found_and_listed_get_their_own_dsn_and_ways_in(tmp_path: Path) -> None:
    from connfix.config.dsn import parse_dsn

    text = GOOD.replace(
        '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n',
        '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n'
        '      admin_dsn: "host=db1 port=5432 dbname=app user=admin"\n'
        "      patroni: {urls: ['http://db1:8008/']}\n"
        "      nodes:\n"
        '        - {name: db3, dsn: "host=db3 port=6432 dbname=app user=connfix"}\n',
    )
    db = load_inventory(write(tmp_path, text)).environment("prod").database
    assert db.several and db.patroni is not None and db.patroni.urls == ["http://db1:8008"]
    found = db.node_at("db2", "10.0.0.2", 5433)  # a member Patroni reports, not listed
    assert parse_dsn(found.dsn) == {
        "host": "10.0.0.2", "port": "5433", "dbname": "app", "user": "connfix"
    }  # fmt: skip
    pointed = db.of_node(found)
    assert parse_dsn(pointed.admin_dsn or "")["host"] == "10.0.0.2"
    assert parse_dsn(pointed.admin_dsn or "")["user"] == "admin"
    assert not pointed.several  # one node: diagnosed as today
    assert db.node_at("db3", "ignored", 1).dsn.startswith("host=db3 port=6432")


def test_a_patroni_that_does_not_answer_leaves_the_listed_nodes_with_a_note(
    tmp_path: Path,
) -> None:
    import socket

    from connfix.diagnosis.cluster import topology

    with socket.socket() as s:  # a loopback port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = GOOD.replace(
        '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n',
        '      dsn: "host=db1 port=5432 dbname=app user=connfix"\n'
        f"      patroni: {{urls: ['http://127.0.0.1:{port}'], timeout: 1s}}\n",
    )
    env = load_inventory(write(tmp_path, text)).environment("prod")
    topo = topology(env)
    assert topo.source == "inventory"
    assert [m.node.name for m in topo.members] == ["primary"]
    assert "Patroni did not answer" in topo.notes[0] and str(port) in topo.notes[0]
