"""The incident lab: a disposable copy of the outage on one Linux machine."""
