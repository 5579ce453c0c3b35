"""The one delivery engine of every push consumer — the exporters and the notifier routes.

    durable log (a cursor per consumer) ─► Pump (one task per consumer) ─► consumer.push(entries)
                      ▲                                                        │
                      └──── settle (acks, dead letters, drops) / schedule ◄── PushResult

- `outcome.py`: the one vocabulary — DELIVERED, RETRY (after), REJECTED (reason).
- `pump.py`: the one loop — batching and linger where a consumer wants them, backoff with jitter
  (`agent/backoff.py`), Retry-After honoured and persisted, rejected entries never retried,
  drops counted, and a hold while an outcome cannot be recorded.

The logs are the push exporters' outbox (`agent/outbox.py`: results, a cursor per exporter) and
the notifications of the alert state file (`alerts/store.py`, behind `alerts/delivery.py`), which
must stay in the transaction that changes the alerts they announce.
"""
