"""tests/docker/: the real Docker Engine (fixtures `docker_engine` and `engine` in tests/conftest.py,
shared with the other tests that use it); these tests run last, in the service lane."""
