"""The `postgres` check type: a PostgreSQL primary and its standbys, and the cluster's verdict.

`config` (the check's config), `connection` (one connection per node, why a node failed),
`queries` (the SQL of a probe and the heartbeat), `cluster` (the verdict on the node states),
`samples`, `summary` (the report of `agentctl check`), and `check` (one run, tying them together).
"""
