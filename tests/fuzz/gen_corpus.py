#!/usr/bin/env python3
"""Writes the seed corpus for frame_fuzz: byte 0 = chunk-size selector, then wire frames."""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "frame")


def s(b):
    return bytes([len(b)]) + b


def frame(t, sid, payload):
    return struct.pack(">BBHII", t, 0, 0, sid, len(payload)) + payload


seeds = {
    "hello": frame(1, 0, struct.pack(">HHII", 1, 0xFFFF, 16384, 262144)
                   + s(b"connector-1") + s(b"1.0.0")),
    "hello_ack": frame(2, 0, struct.pack(">HHHHIIII", 1, 0, 4, 0, 16384, 262144, 4096, 1000)
                       + s(b"1.2.0") + s(b"1.0.0")),
    "open": frame(3, 1, s(b"web") + s(b"10.0.0.5:8080")),
    "data": frame(6, 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "window": frame(7, 1, struct.pack(">I", 65536)),
    "goaway": frame(12, 0, struct.pack(">IH", 7, 10) + s(b"draining")),
    "rst": frame(9, 3, struct.pack(">H", 7) + s(b"cancelled")),
    "ping": frame(10, 0, struct.pack(">Q", 0x1122334455667788)),
    "config": frame(13, 0, struct.pack(">Q", 3) + b'{"apps":[]}'),
}
seeds["session"] = seeds["open"] + frame(4, 1, b"") + seeds["data"] + seeds["window"] \
    + frame(8, 1, b"") + seeds["goaway"]

os.makedirs(out, exist_ok=True)
for i, (name, data) in enumerate(sorted(seeds.items())):
    # Vary the chunk selector so seeds start with different splits (0 = whole input).
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([i * 7 % 64]) + data)
