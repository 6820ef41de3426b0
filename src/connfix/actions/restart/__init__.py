"""The rolling restart's parts: the read-only `preflight`, the `gates` a restarted host
passes in order, one `host`'s restart and its `HostOutcome`, and the `roll` that takes
the hosts batch by batch and halts at the first failure. The runbook action that uses
them is `connfix.actions.rolling_restart`."""
