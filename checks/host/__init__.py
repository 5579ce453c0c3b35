"""The `host` check type: CPU, memory, filesystems, disks and network of the host, from procfs."""
