"""The app hosts: SSH with strict host keys (`remote`, the one importer of fabric and
paramiko), known_hosts markers and host certificates (`known_hosts`), systemd units read
and restarted through `systemctl` (`systemd`)."""
