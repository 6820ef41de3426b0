"""`connfix serve`"""

from __future__ import annotations

import click

from connfix.cli.options import DURATION, incidents_dir_option, inventory_option, inventory_search


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:9187",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen for Alertmanager / PagerDuty webhooks and Prometheus scrapes.",
)
@click.option(
    "--label",
    default="environment",
    show_default=True,
    help="The alert label whose value names the inventory environment.",
)
@click.option(
    "--metrics-interval",
    default="10s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="Diagnose each environment at most this often for /metrics.",
)
@click.option(
    "--request-timeout",
    default="10s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="A connection must send a whole request head within this, and then its body.",
)
@incidents_dir_option
@inventory_option
def serve(
    listen: str,
    label: str,
    metrics_interval: float,
    request_timeout: float,
    incidents_dir: str | None,
    inventory_path: str | None,
) -> None:
    """Receive alerts and run triages under each environment's alert policy.

    POST /alertmanager (Alertmanager's webhook) and POST /pagerduty (PagerDuty v3
    webhooks) start a run for the environment an alert names, under the environment's
    `alerts:` policy in the inventory (observe, dry-run, auto within caps, or approve);
    the answer comes at once (202) and the run goes on in the background. GET /metrics
    serves the diagnosis of every environment with a policy as Prometheus metrics; GET
    /health says the receiver is up. POST /approvals/INCIDENT approves or rejects the
    plan a run waits for; POST /slack/interactive takes the Approve / Reject buttons of
    a Slack notification, signed with $CONNFIX_SLACK_SIGNING_SECRET. Requests must carry
    the bearer token in $CONNFIX_SERVE_TOKEN (or a signature made with
    $CONNFIX_SERVE_HMAC_SECRET, or Slack's); anything else is refused and nothing runs.
    It will not start without the token or the secret. Replicas sharing one incidents
    directory share duplicates, min_interval and approvals.

    \b
    Example:
      CONNFIX_SERVE_TOKEN=… connfix serve -i inventory.yaml --listen 127.0.0.1:9187
      connfix serve --listen 0.0.0.0:9187 --label env
      connfix serve --request-timeout 5s
    """
    import os

    import uvicorn

    from connfix import InputError
    from connfix import serve as core
    from connfix.config.inventory_file import find_inventory, load_inventory

    try:
        host, port = core.listen_address(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    token, secret = core.secrets_from_environment()
    if not token and not secret:
        raise InputError(
            f"set {core.TOKEN_ENV} (a bearer token) or {core.HMAC_ENV} (PagerDuty's signing"
            " secret): connfix serve never listens unauthenticated"
        )
    loaded = load_inventory(find_inventory(inventory_path, None, inventory_search()))
    policies = [n for n, e in loaded.inventory.environments.items() if e.alerts is not None]
    if not policies:
        raise InputError(
            f"{loaded.path}: no environment has an alerts: policy (observe, dry-run, auto or"
            " approve);"
            " serve would refuse every alert"
        )
    server = core.Server(loaded, incidents_dir, token, secret, label, metrics_interval)
    server.slack_secret = os.environ.get(core.SLACK_ENV) or None
    click.echo(
        f"connfix serve: listening on {host}:{port} for {', '.join(policies)} ({loaded.path})",
        err=True,
    )
    try:
        core.bound_logs()
        core.HEADER_SECONDS = core.BODY_SECONDS = request_timeout
        uvicorn.run(
            core.app(server),
            host=host,
            port=port,
            log_level="warning",
            http=core.bounded_protocol(),
            timeout_keep_alive=5,
        )
    finally:
        core.wait_for_runs(server, 300)
