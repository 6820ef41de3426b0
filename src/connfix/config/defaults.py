"""Defaults shared by the command line and the core, kept free of heavy imports."""

TERMINATE_MAX = 50  # sessions per terminate step
TERMINATE_MAX_FRACTION = 0.5  # of all client backends per terminate step
HEALTH_CHECK_S = 10.0  # a host's health check, in a diagnosis or run ahead of the first
# A health check run ahead of a run's first diagnosis, on the early login, stands for that
# diagnosis's when it began at most this long before (else it is run again).
HEALTH_AHEAD_FRESH_S = 2.0
