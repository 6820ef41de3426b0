"""Defaults shared by the command line and the core, kept free of heavy imports."""

TERMINATE_MAX = 50  # sessions per terminate step
TERMINATE_MAX_FRACTION = 0.5  # of all client backends per terminate step
