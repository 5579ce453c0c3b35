"""The lab: real servers on 127.0.0.1 standing in for the production system.

Used by the tests, the benchmarks and `agentctl demo`. Everything listens on loopback only, on
free ports, in temporary directories, and is stopped by whoever started it.
"""
