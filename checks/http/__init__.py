"""The `http` check type: one HTTP(S) probe, every phase timed, every failure a reason."""
