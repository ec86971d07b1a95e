"""A TCP proxy in front of a real server, for network faults on loopback.

The S3 endpoint under test is moto's real HTTP server; tests point the pipeline at this
proxy instead, so they can take the endpoint away (connections refused, open ones reset),
bring it back, or hold the request whose bytes match a pattern (the upload of one checkpoint
file) for as long as they like."""

from __future__ import annotations

import contextlib
import random
import socket
import threading


def _port_outside_the_ephemeral_range() -> int:
    """A free port the kernel never picks as a connection's source port. While the proxy is
    down, clients retrying 127.0.0.1:<port> could otherwise be given <port> itself as their
    source port (a TCP self-connect), and the proxy could not listen there again."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._hold: bytes | None = None
        self.held = threading.Event()  # set when a request matching the hold pattern arrived
        self._watch: bytes | None = None
        self.seen = threading.Event()  # set when a request matching the watch pattern passed
        self._released = threading.Event()
        self.port = _port_outside_the_ephemeral_range()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- faults -------------------------------------------------------------------------

    def down(self) -> None:
        """The endpoint disappears: new connections are refused, open ones are reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):  # stop listening now: close() alone leaves the
                listener.shutdown(socket.SHUT_RDWR)  # socket open under a blocked accept()
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                c.close()

    def up(self) -> None:
        """Listen again, on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def hold(self, pattern: bytes) -> None:
        """Stall any request whose bytes contain ``pattern`` until ``release()``."""
        self._released.clear()
        self.held.clear()
        self._hold = pattern

    def watch(self, pattern: bytes) -> None:
        """Set ``seen`` when a request whose bytes contain ``pattern`` passes."""
        self.seen.clear()
        self._watch = pattern

    def release(self) -> None:
        self._hold = None
        self._released.set()

    def close(self) -> None:
        self.release()
        self.down()

    # --- relay --------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by down()
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    server.close()
                    return
                self._conns |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                watch = self._watch
                if from_client and watch and watch in tail + data:
                    self.seen.set()
                pattern = self._hold
                if from_client and pattern and pattern in tail + data:
                    self.held.set()
                    self._released.wait()
                tail = data[-256:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
