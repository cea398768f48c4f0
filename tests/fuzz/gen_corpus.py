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
# What a relay-side mux hears from its connector (the fuzz harness pre-opens streams 1,3,5,7).
seeds["relay_session"] = frame(1, 0, seeds["hello"][12:]) + frame(4, 1, b"") \
    + frame(6, 1, b"HTTP/1.1 200 OK\r\n\r\n") + frame(7, 1, struct.pack(">I", 4096)) \
    + frame(8, 1, b"") + frame(5, 3, struct.pack(">H", 4) + s(b"refused")) \
    + frame(4, 5, b"") + frame(9, 5, struct.pack(">H", 7) + s(b"")) \
    + frame(11, 0, struct.pack(">Q", 42))
# What a connector-side mux hears from its relay.
seeds["connector_session"] = seeds["hello_ack"] + seeds["open"] + seeds["data"] \
    + frame(7, 1, struct.pack(">I", 4096)) + frame(3, 3, s(b"ssh") + s(b"10.0.0.6:22")) \
    + frame(6, 3, b"") + frame(6, 3, b"x") + frame(8, 1, b"") + frame(9, 3, struct.pack(">H", 7) \
    + s(b"bye")) + seeds["ping"] + seeds["config"]

os.makedirs(out, exist_ok=True)
for i, (name, data) in enumerate(sorted(seeds.items())):
    # Vary the chunk selector so seeds start with different splits (0 = whole input).
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([i * 7 % 64]) + data)
