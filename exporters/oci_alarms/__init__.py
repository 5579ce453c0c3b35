"""OCI Monitoring alarms as code: `agentctl oci-alarms apply|plan|diff|list|validate`."""
