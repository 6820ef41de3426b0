"""What operators write and what connfix writes for them, read and written safely: the
inventory (`inventory`, found and read by `inventory_file`), YAML with every value's
line (`yamlfile`), durations (`units`), the caps' vocabulary (`effects`), flag defaults
(`defaults`); and the rules for anything from outside: files never through a symlink
(`files`), terminal text defanged (`text`), generated files quoted (`quoting`), secrets
redacted (`redact`), Jinja bounded (`sandbox`), no redirect followed (`http`). The
bottom package: it imports no other."""
