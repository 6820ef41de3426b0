"""`connfix` (the installed command) and `python -m connfix`.

Before anything else is imported, the cyclic garbage collector's first threshold is
raised from 700 to GC_THRESHOLD allocations. A command's start-up allocates about 90,000
objects that live until it exits (modules, classes, pydantic's schemas); at 700 the
collector scanned them over a hundred times for nothing, 10–30 ms of every command
(docs/benchmarks.md). It still runs, every GC_THRESHOLD allocations, so a long run
(serve, a watch) collects its cycles as before."""

import gc

GC_THRESHOLD = 100_000


def run() -> None:
    """The command line, with the collector's threshold set first and the dataclasses'
    generated code from connfix's cache (connfix.config.generated)."""
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    from connfix.config import generated

    generated.install()
    from connfix.cli import main

    main()


if __name__ == "__main__":
    run()
