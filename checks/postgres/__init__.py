"""The `postgres` check type: nodes, replication, heartbeat and the cluster verdict."""
