"""A network link that tests can cut: a TCP forwarder on a free loopback port between a
client and a broker.

``flap()`` closes every connection through it at both ends, the way a dropped Wi-Fi or
a rebooted switch does, while the broker keeps running (unlike killing the broker, it
loses nothing the broker already holds). New connections are forwarded as before;
``flap(again_after_reply=True)`` also cuts the next connection right after the broker's
first packet (its CONNACK) went through: a link that drops again just after the client
reconnected, when the client has re-sends in hand and nothing acknowledged yet.
One thread owns every socket; ``flap`` only asks it, through a wake-up socket.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

CHUNK = 65536


class Link:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._flaps_asked = 0
        self._again_asked = False
        self._halt = False
        self.flaps = 0  # flaps done
        self.cut = 0  # connections cut by them
        self.connections = 0  # connections forwarded, in total
        self._thread = threading.Thread(target=self._run, name="link", daemon=True)
        self._thread.start()

    def flap(self, *, again_after_reply: bool = False) -> None:
        """Cut every open connection now (done by the link's thread)."""
        with self._lock:
            self._flaps_asked += 1
            self._again_asked = self._again_asked or again_after_reply
        self._wake_w.send(b"f")

    def close(self) -> None:
        self._halt = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        self._wake_r.close()
        self._wake_w.close()

    # --- the link's thread -----------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        cut_after_reply: set[socket.socket] = set()  # upstream sockets to cut once used
        arm = False

        def drop(sock: socket.socket) -> None:
            other = peers.pop(sock, None)
            for s in (sock, other):
                if s is None:
                    continue
                peers.pop(s, None)
                cut_after_reply.discard(s)
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(s)
                with contextlib.suppress(OSError):
                    s.close()

        done = 0
        try:
            while not self._halt:
                for key, _ in sel.select(1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        sock.recv(4096)
                        with self._lock:
                            asked = self._flaps_asked
                            arm = arm or self._again_asked
                            self._again_asked = False
                        if asked > done:
                            cut = len(peers) // 2
                            for s in list(peers):
                                drop(s)
                            self.cut += cut
                            self.flaps += asked - done
                            done = asked
                    elif sock is self._listener:
                        upstream = self._accept(sel, peers)
                        if upstream is not None and arm:
                            cut_after_reply.add(upstream)
                            arm = False
                    elif sock in peers:
                        try:
                            data = sock.recv(CHUNK)
                            if not data:
                                raise ConnectionResetError
                            peers[sock].sendall(data)
                            if sock in cut_after_reply:
                                drop(sock)
                                self.cut += 1
                        except OSError:
                            drop(sock)
        finally:
            for s in list(peers):
                drop(s)
            self._listener.close()
            sel.close()

    def _accept(self, sel: selectors.BaseSelector,
                peers: dict[socket.socket, socket.socket]) -> socket.socket | None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return None
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:  # the broker is down: the client sees its connection close
            client.close()
            return None
        for s in (client, upstream):
            s.setblocking(True)  # sendall on loopback; reads only when select says so
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peers[client], peers[upstream] = upstream, client
        sel.register(client, selectors.EVENT_READ, None)
        sel.register(upstream, selectors.EVENT_READ, None)
        self.connections += 1
        return upstream
