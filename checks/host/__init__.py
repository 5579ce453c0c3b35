"""The `host` check type: CPU, memory, filesystems, disks and network of the host, from procfs.

`config` (paths, exclusions, thresholds), `procfs` (reading the host, in worker threads),
`samples`, and `check` (one run: read, stat the filesystems under a deadline, grade).
"""
