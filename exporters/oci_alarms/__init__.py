"""OCI Monitoring alarms as code: `agentctl oci-alarms apply|plan|diff|list|validate`.

A YAML file (deploy/oci/alarms.yaml) declares alarms on the metrics the OCI exporter pushes
(exporters/oci.py), in MQL. `apply` makes the compartment hold exactly those alarms, keyed by
display name: it creates an alarm no alarm of that name exists for, updates one whose managed
fields differ, and leaves equal ones alone, so a second run writes nothing. Alarms of the
compartment that the file does not name are reported and kept (`--prune` deletes those tagged
`managed-by: mamori`, i.e. that this command created). See docs/oci-alarms.md.

Lifecycle and guarantees:
- The file is validated completely before any request: one `file:line: path: message` per
  problem, like the agent's config (agent/yamldoc.py). The MQL is parsed, and every metric must be
  one the exporter sends (agent/catalog.py's per-check metrics), every dimension one it sends with
  that metric (host, check, target, the metric's labels, and the `dimensions:` the file declares
  for agent labels and static dimensions), and values of closed label sets (reasons, check types,
  lb roles) must exist, since a misspelt one makes an alarm that can never fire.
- Nothing is written before every compartment is listed and checked: a display name the file
  manages that two alarms of the compartment share is refused ("nothing was changed").
- The SDK's own retries and circuit breaker are off (as in exporters/oci.py); each call instead
  gets a bounded retry of its own: 429, 500, 502, 503, 504, timeouts and refused connections are
  retried up to 5 attempts, after `Retry-After` or an exponential backoff with jitter (0.5 s ->
  8 s). Creates carry an `opc-retry-token`, so a retried create never makes a second alarm. Calls
  are paced (`max_tps`, default 5) under the service's 10 requests per second per tenancy across
  all alarm operations. What still fails is one line (exit 1); a run stopped half-way is finished
  by running it again.
"""
