"""The project's one RESP (Redis protocol) client: standard library only.

Used on the nodes (the KV janitor, the resp watchdog, the data-path bench) and on the controller
(the capacity drill, node checks). Redis and Kvrocks speak the same protocol.

As a command (node checks run it on a node, so they talk to the server like a client there)::

    KV_PASSWORD=... python3 -m kvstack_node.resp HOST PORT 'AUTH|@PASSWORD' 'INFO|stats'

Each command is its arguments joined by ``|``; ``@PASSWORD`` stands for ``$KV_PASSWORD`` (the
password travels in the environment, never on the command line). Each reply is printed on one
line in its wire form (``+OK``, ``-ERR ...``, ``:1``, ``$5 hello``), CRLFs as spaces; an error
reply does not stop the commands after it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

KiB = 1 << 10


class RespError(RuntimeError):
    """An error reply from the server (``-ERR ...``) or a protocol violation."""


class RespAuthError(RespError):
    """AUTH was refused (wrong password or user) or the server wants a password we lack."""


Buffer = bytes | bytearray | memoryview


def _b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


class RespClient:
    """A minimal blocking RESP2 client for large values.

    ``set`` sends the command header, the caller's buffer itself and CRLF in one scatter-gather
    ``sendmsg`` loop (``sendall`` of header + value without copying them into one string);
    ``get_into`` reads the bulk reply with ``recv_into`` straight into a caller-owned buffer, so
    reading a value allocates nothing per call. Replies other than bulk values (AUTH, DEL, PING,
    ...) go through a small read buffer.
    """

    def __init__(
        self,
        host: str,
        port: int,
        password: str | None = None,
        username: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        """Connect and, with a *password*, AUTH (``AUTH [username] password``).

        Raises:
            RespAuthError: the server refused the credentials.
            OSError: the connection failed.
        """
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rbuf = bytearray(64 * KiB)
        self._rview = memoryview(self._rbuf)
        self._rpos = 0  # start of unread bytes in _rbuf
        self._rend = 0  # end of unread bytes in _rbuf
        if password:
            args = ["AUTH", *([username] if username else []), password]
            try:
                self.command(*args)
            except RespError as e:
                self.close()
                raise RespAuthError(f"AUTH refused by {host}:{port}: {e}") from None

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _header(args: Sequence[bytes], value_len: int | None = None) -> bytes:
        """``*N`` and every argument as a bulk string; with *value_len* the last argument's
        ``$len\\r\\n`` announcement too (its bytes follow separately)."""
        n = len(args) + (value_len is not None)
        parts = [b"*%d\r\n" % n]
        for a in args:
            parts += [b"$%d\r\n" % len(a), a, b"\r\n"]
        if value_len is not None:
            parts.append(b"$%d\r\n" % value_len)
        return b"".join(parts)

    def _send_all(self, parts: list[Buffer]) -> None:
        """``sendall`` of several buffers with scatter-gather ``sendmsg``: one system call for
        header, value and CRLF where the socket takes it all, no copy into one buffer."""
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views and sent:
                views[0] = views[0][sent:]

    def _fill(self) -> None:
        """Read more bytes into the small read buffer (compacting it first)."""
        if self._rpos:
            rest = self._rend - self._rpos
            self._rview[:rest] = self._rview[self._rpos : self._rend]
            self._rpos, self._rend = 0, rest
        if self._rend == len(self._rbuf):
            raise RespError("reply line longer than the read buffer")
        k = self.sock.recv_into(self._rview[self._rend :])
        if not k:
            raise RespError(f"connection to {self.host}:{self.port} closed by the server")
        self._rend += k

    def _readline(self) -> bytes:
        """One reply line without its CRLF."""
        while True:
            i = self._rbuf.find(b"\r\n", self._rpos, self._rend)
            if i >= 0:
                line = bytes(self._rview[self._rpos : i])
                self._rpos = i + 2
                return line
            self._fill()

    def _read_exact_into(self, dst: memoryview) -> None:
        """Fill *dst* from what is buffered, then straight from the socket."""
        n = len(dst)
        have = min(n, self._rend - self._rpos)
        if have:
            dst[:have] = self._rview[self._rpos : self._rpos + have]
            self._rpos += have
        got = have
        while got < n:
            k = self.sock.recv_into(dst[got:])
            if not k:
                raise RespError(f"connection to {self.host}:{self.port} closed mid-value")
            got += k

    def _skip_crlf(self) -> None:
        while self._rend - self._rpos < 2:
            self._fill()
        if self._rbuf[self._rpos : self._rpos + 2] != b"\r\n":
            raise RespError("bulk value not followed by CRLF")
        self._rpos += 2

    def _read_reply(self) -> Any:
        """A whole reply: str (+), int (:), bytes or None ($), list (*); ``-`` raises RespError."""
        line = self._readline()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            out = bytearray(n)
            self._read_exact_into(memoryview(out))
            self._skip_crlf()
            return bytes(out)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read_reply() for _ in range(n)]
        raise RespError(f"unexpected reply line {line[:40]!r}")

    # -- commands ------------------------------------------------------------------------------

    def command(self, *args: str | bytes) -> Any:
        """Send one command of small arguments and return its parsed reply."""
        self.sock.sendall(self._header([_b(a) for a in args]))
        return self._read_reply()

    def pipeline(self, commands: Sequence[Sequence[str | bytes]]) -> list[Any]:
        """Send *commands* at once, then read their replies in order; an error reply reads None."""
        if not commands:
            return []
        self.sock.sendall(b"".join(self._header([_b(a) for a in c]) for c in commands))
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(self._read_reply())
            except RespError:
                out.append(None)
        return out

    def set(self, key: str | bytes, value: Buffer) -> None:
        """``SET key value``: header, *value* itself and CRLF, gathered (no copy of the value)."""
        mv = memoryview(value).cast("B")
        self._send_all([self._header([b"SET", _b(key)], len(mv)), mv, b"\r\n"])
        reply = self._read_reply()
        if reply != "OK":
            raise RespError(f"SET {key!r}: unexpected reply {reply!r}")

    def get_into(self, key: str | bytes, buf: bytearray | memoryview) -> int | None:
        """``GET key`` into *buf*: the value's length, or None when the key does not exist.

        Raises:
            RespError: an error reply, or a value longer than *buf* (the value is read and
                dropped first, so the connection stays usable).
        """
        self.sock.sendall(self._header([b"GET", _b(key)]))
        return self._read_bulk_into(key, buf)

    def _read_bulk_into(self, key: str | bytes, buf: bytearray | memoryview) -> int | None:
        """Read one GET reply into *buf* (see :meth:`get_into`)."""
        line = self._readline()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind != b"$":
            raise RespError(f"GET {key!r}: unexpected reply line {line[:40]!r}")
        n = int(rest)
        if n < 0:
            return None
        dst = memoryview(buf).cast("B")
        if n > len(dst):
            self._read_exact_into(memoryview(bytearray(n)))
            self._skip_crlf()
            raise RespError(f"GET {key!r}: value of {n} bytes does not fit a {len(dst)}-byte buffer")
        self._read_exact_into(dst[:n])
        self._skip_crlf()
        return n

    def get_many_into(
        self, keys: Sequence[str | bytes], bufs: Sequence[bytearray | memoryview]
    ) -> list[int | None]:
        """Pipelined ``GET``: every command sent at once, then each reply read into its buffer, in
        order (a reply that does not fit raises, leaving the rest unread: close the client)."""
        self.sock.sendall(b"".join(self._header([b"GET", _b(k)]) for k in keys))
        return [self._read_bulk_into(k, b) for k, b in zip(keys, bufs, strict=True)]

    def set_many(self, keys: Sequence[str | bytes], value: Buffer) -> None:
        """Pipelined ``SET`` of *value* under each key: every command sent (header, value and CRLF
        gathered, no copy), then every reply read; raises after reading all of them if one was
        not OK."""
        mv = memoryview(value).cast("B")
        for k in keys:
            self._send_all([self._header([b"SET", _b(k)], len(mv)), mv, b"\r\n"])
        replies: list[Any] = []
        for _ in keys:
            try:
                replies.append(self._read_reply())
            except RespError as e:  # read the rest first: the connection stays in step
                replies.append(f"-{e}")
        bad = [(k, r) for k, r in zip(keys, replies, strict=True) if r != "OK"]
        if bad:
            raise RespError(f"SET {bad[0][0]!r}: unexpected reply {bad[0][1]!r} ({len(bad)} of {len(keys)})")

    def get(self, key: str | bytes) -> bytes | None:
        """``GET key`` as new bytes (allocates; for checks, not for the bench)."""
        reply = self.command("GET", key)
        if reply is not None and not isinstance(reply, bytes):
            raise RespError(f"GET {key!r}: unexpected reply {reply!r}")
        return reply

    def delete(self, *keys: str | bytes) -> int:
        """``DEL keys...``: how many existed."""
        return int(self.command("DEL", *keys)) if keys else 0


def wire(reply: Any) -> str:
    """*reply* as the CLI prints it: its RESP wire form on one line (CRLF as a space)."""
    if isinstance(reply, RespError):
        text = "-" + str(reply)
    elif reply is None:
        text = "$-1"
    elif isinstance(reply, int):
        text = f":{reply}"
    elif isinstance(reply, bytes):
        text = f"${len(reply)} " + reply.decode(errors="replace")
    elif isinstance(reply, list):
        text = f"*{len(reply)} " + " ".join(wire(r) for r in reply)
    else:
        text = f"+{reply}"
    return text.strip().replace("\r\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m kvstack_node.resp HOST PORT CMD...``: print each command's reply."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, commands = args[0], int(args[1]), args[2:]
    password = os.environ.get("KV_PASSWORD", "")
    with RespClient(host, port, timeout=5) as c:
        for cmd in commands:
            parts = [password if a == "@PASSWORD" else a for a in cmd.split("|")]
            try:
                reply = c.command(*parts)
            except RespError as e:
                reply = e
            print(wire(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
