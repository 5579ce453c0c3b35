"""`LinkProxy`: a TCP relay on 127.0.0.1 that can be partitioned like a network.

    proxy = LinkProxy(target_port)     # listens on 127.0.0.1:proxy.port at once
    proxy.cut(); proxy.restore()       # bytes stop both ways, nothing is closed / flow again
    proxy.reset()                      # every current connection closed with a TCP RST
    proxy.close()                      # safe twice

The Postgres lab puts it between the standby and the primary; the MQTT and fleet tests put it
between an agent and the broker or a server.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from contextlib import suppress

from lab.ports import HOST

_PROXY_POLL_MS = 50  # how often an idle relay thread looks at the switches
_PROXY_BUFFER = 1 << 20  # stop reading one side while this much waits to be written to the other


class _Pipe:
    """One relayed connection: the client's socket, ours to the target, and bytes in flight."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.closing = False  # set under the proxy's lock; the pipe's thread closes the sockets
        self.abort = False  # close with RST rather than FIN

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if self.abort:
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


class LinkProxy:
    """A TCP relay from 127.0.0.1:`port` to 127.0.0.1:`target_port`, run by threads, that can be
    partitioned like a network.

    Threads, not the event loop: it keeps relaying whatever loop (or none) the caller runs, and
    across loops (a session-scoped fixture and function-scoped tests). One thread accepts; one
    thread per connection moves bytes with non-blocking sockets. All methods are thread-safe and
    return once their effect is real. `close()` is safe twice.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((HOST, 0), backlog=64)
        self.port = int(self._listener.getsockname()[1])
        self._cond = threading.Condition()
        self._cut = False
        self._closed = False
        self._busy = 0  # relay threads between "allowed to move bytes" and "done moving them"
        self._pipes: set[_Pipe] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="mamori-pg-link", daemon=True)
        self._acceptor.start()

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def connections(self) -> int:
        """Connections currently relayed (or held while the link is cut)."""
        with self._cond:
            return len(self._pipes)

    def cut(self) -> None:
        """Stop moving bytes in both directions, closing nothing: every connection stays open and
        silent, bytes already read wait in the relay, new connections are accepted (the kernel
        completes the handshake) but not forwarded. Returns once no thread is moving bytes."""
        with self._cond:
            self._cut = True
            while self._busy:
                self._cond.wait()

    def restore(self) -> None:
        """Move bytes again: held data flows, held connections are forwarded (in ~0 s)."""
        with self._cond:
            self._cut = False
            self._cond.notify_all()

    def reset(self, timeout: float = 5.0) -> None:
        """Close every current connection with a TCP RST on both sides (cut or not: both peers
        learn at once, as from a firewall dropping its state). The cut state is unchanged.
        Returns once those sockets are closed."""
        self._close_pipes(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and reset every connection. Safe twice."""
        with self._cond:
            self._closed = True
        self._close_pipes(timeout)
        self._acceptor.join(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _close_pipes(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            victims = set(self._pipes)
            for pipe in victims:
                pipe.closing = pipe.abort = True
            self._cond.notify_all()
            while victims & self._pipes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(victims & self._pipes)} relay threads did not stop")
                self._cond.wait(remaining)

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        try:
            while not self._closed:
                if not poller.poll(_PROXY_POLL_MS):
                    continue
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    continue
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pipe = _Pipe(client)
                thread = threading.Thread(
                    target=self._relay, args=(pipe,), name="mamori-pg-relay", daemon=True
                )
                with self._cond:
                    if self._closed:
                        client.close()
                        break
                    self._pipes.add(pipe)
                    self.accepted += 1
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                thread.start()
        finally:
            self._listener.close()

    def _relay(self, pipe: _Pipe) -> None:
        try:
            while self._enter(pipe):
                try:
                    alive = self._step(pipe)
                finally:
                    with self._cond:
                        self._busy -= 1
                        self._cond.notify_all()
                if not alive:
                    break
        finally:
            pipe.close()
            with self._cond:
                self._pipes.discard(pipe)
                self._cond.notify_all()

    def _enter(self, pipe: _Pipe) -> bool:
        """Wait while the link is cut; False when the pipe must close, else count it busy."""
        with self._cond:
            while self._cut and not pipe.closing:
                self._cond.wait()
            if pipe.closing:
                return False
            self._busy += 1
            return True

    def _step(self, pipe: _Pipe) -> bool:
        """Move what can be moved now (waiting at most one poll interval); False at EOF or error."""
        if pipe.upstream is None:
            # Connect only once the link is up: a cut link forwards no SYN either.
            try:
                pipe.upstream = socket.create_connection((HOST, self.target_port), timeout=1.0)
            except OSError:
                return False  # the target is down: the client sees its connection closed
            pipe.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe.upstream.setblocking(False)
            pipe.client.setblocking(False)
        # (socket, bytes read from it for the other side, bytes to write to it)
        sides = (
            (pipe.client, pipe.to_upstream, pipe.to_client),
            (pipe.upstream, pipe.to_client, pipe.to_upstream),
        )
        poller = select.poll()
        for sock, inbox, outbox in sides:
            mask = (select.POLLIN if len(inbox) < _PROXY_BUFFER else 0) | (select.POLLOUT if outbox else 0)
            poller.register(sock, mask)  # mask 0 still reports errors and hang-ups
        events = dict(poller.poll(_PROXY_POLL_MS))
        # Writes before reads, so bytes read before an EOF still reach the other side.
        for sock, _, outbox in sides:
            if outbox and events.get(sock.fileno(), 0) & select.POLLOUT:
                try:
                    sent = sock.send(outbox)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return False
                del outbox[:sent]
        for sock, inbox, _ in sides:
            if not events.get(sock.fileno(), 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not data:
                self._flush(pipe)
                return False
            inbox += data
        return True

    @staticmethod
    def _flush(pipe: _Pipe) -> None:
        """Best effort, without blocking: hand on what is buffered before closing."""
        for sock, outbox in ((pipe.client, pipe.to_client), (pipe.upstream, pipe.to_upstream)):
            if sock is not None and outbox:
                with suppress(OSError):
                    sock.send(outbox)
