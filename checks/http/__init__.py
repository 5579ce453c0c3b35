"""The `http` check type: one HTTP(S) probe, every phase timed, every failure a reason.

`config` (URL, credentials and the rules a response must meet), `wire` (HTTP/1.1 on h11, failures
in HTTP's words), and `check` (one probe: connect, TLS, request, redirects, grading).
"""
