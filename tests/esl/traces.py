"""Read the byte-exact FreeSWITCH captures in tests/sim/captures/freeswitch/ (format: README there)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import TRACES

FS_TRACES = TRACES / "freeswitch"
_BLOCK = re.compile(rb"\n===== (>>> SENT|<<< RECV|### NOTE|### SUMMARY) t=\+[0-9.]+s "
                    rb"wall=\S+ bytes=(\d+) =====\n")


@dataclass(frozen=True)
class Block:
    kind: str  # "sent" (the client), "recv" (FreeSWITCH, one TCP read), "note"
    data: bytes


def load(name: str) -> list[Block]:
    path: Path = FS_TRACES / name
    data = path.read_bytes()
    if data.startswith(b"<<< ") or data.startswith(b">>> "):  # the repr() format
        blocks = []
        for line in data.decode().splitlines():
            if line[:4] in ("<<< ", ">>> "):
                value = ast.literal_eval(line[4:])
                raw = value if isinstance(value, bytes) else value.encode()
                blocks.append(Block("recv" if line.startswith("<<<") else "sent", raw))
        return blocks
    blocks, pos = [], 0
    while pos < len(data) - 1:
        m = _BLOCK.match(data, pos)
        if not m:
            raise ValueError(f"{name}: unparsable at byte {pos}")
        kind = {b">>> SENT": "sent", b"<<< RECV": "recv"}.get(m.group(1), "note")
        if kind == "note":
            end = data.find(b"\n=====", m.end())
            end = len(data) if end < 0 else end
        else:
            end = m.end() + int(m.group(2))
        blocks.append(Block(kind, data[m.end():end]))
        pos = end
    return blocks


def received(name: str) -> list[bytes]:
    """What FreeSWITCH sent, read by read, as captured."""
    return [b.data for b in load(name) if b.kind == "recv"]


ALL = sorted(p.name for p in FS_TRACES.glob("*.txt"))
