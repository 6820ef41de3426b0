"""Bad lab flags that are checked only after root and the PostgreSQL version (so as root):
exit status 2 and the reason, nothing built."""

from __future__ import annotations

from click.testing import CliRunner

from connfix.cli import cli


def test_lab_hosts_that_do_not_fit_in_max_connections_are_refused() -> None:
    result = CliRunner().invoke(cli, ["lab", "up", "--hosts", "8", "--max-connections", "20"])
    assert result.exit_code == 2, result.output
    assert "do not fit in max_connections" in result.output, result.output
