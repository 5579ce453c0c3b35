"""The one delivery engine of every push consumer — the exporters and the notifier routes.

    durable log (a cursor per consumer) ─► Pump (one task per consumer) ─► consumer.push(entries)
                      ▲                                                        │
                      └──── settle (acks, dead letters, drops) / schedule ◄── PushResult

- `outcome.py`: the one vocabulary — DELIVERED, RETRY (after), REJECTED (reason).
- `pump.py`: the one loop — batching and linger where a consumer wants them, backoff with jitter
  (`agent/backoff.py`), Retry-After honoured and persisted, rejected entries never retried,
  drops counted, and a hold while an outcome cannot be recorded.
- `log.py`: the one durable log — tables inside a state file (joining its transactions), a
  cursor and a retry schedule per consumer, dead letters, a size cap, the disk-full rules.
- `schema.py`: the schema version of a log's file (PRAGMA user_version) and its migration.

Its two instances: the push exporters' outbox (`agent/outbox.py`: a shared log of results, a
cursor per exporter) and the notifications of the alert state file (`alerts/store.py`: an
addressed, strict log, a cursor per route, written in the transaction that changes the alerts
they announce; `alerts/delivery.py` binds a route to the pump).
"""
