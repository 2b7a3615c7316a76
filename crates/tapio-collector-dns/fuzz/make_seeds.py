#!/usr/bin/env python3
"""Write the seed corpus into ../tests/corpus: real dnsmasq answers (pass the
port of a running test dnsmasq as argv[1]) plus hand-made adversarial packets.
Files named valid-* must decode, bad-* must be rejected."""
import os, socket, struct, sys

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "corpus")
os.makedirs(out, exist_ok=True)

def name(n):
    b = b""
    for label in n.strip(".").split("."):
        b += bytes([len(label)]) + label.encode()
    return b + b"\0"

def query(qid, qname, qtype, edns=False):
    h = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q = name(qname) + struct.pack(">HH", qtype, 1)
    if edns:
        q += b"\0" + struct.pack(">HHIH", 41, 1232, 0x00008000, 0)
    return h + q

def save(fname, data):
    with open(os.path.join(out, fname), "wb") as f:
        f.write(data)

TYPES = {"A": 1, "AAAA": 28, "TXT": 16, "SRV": 33, "CNAME": 5, "PTR": 12, "MX": 15, "SOA": 6, "ANY": 255}
if len(sys.argv) > 1:
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for i, (n, t, e) in enumerate([
        ("www.tapio.test", "A", True), ("www.tapio.test", "AAAA", False), ("nx.tapio.test", "A", False),
        ("alias.tapio.test", "A", True), ("_http._tcp.tapio.test", "SRV", False),
        ("big.tapio.test", "TXT", False), ("big.tapio.test", "TXT", True), ("elsewhere.example", "A", False),
        ("web.shop.svc.cluster.local", "A", True), ("tapio.test", "SOA", False)]):
        q = query(0x1000 + i, n, TYPES[t], e)
        save(f"valid-query-{i:02}-{t}", q)
        s.sendto(q, ("127.0.0.1", port))
        r, _ = s.recvfrom(4096)
        save(f"valid-response-{i:02}-{t}", r)
        # The same over TCP, framed.
        t_ = socket.create_connection(("127.0.0.1", port), timeout=2)
        t_.sendall(struct.pack(">H", len(q)) + q)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
            chunk = t_.recv(65535)
            if not chunk:
                break
            buf += chunk
        t_.close()
        save(f"tcp-response-{i:02}-{t}", buf)

hdr1 = struct.pack(">HHHHHH", 1, 0x8180, 1, 1, 0, 0)
# Compression pointer to itself in the question.
save("bad-compression-self-loop", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
# Two pointers pointing at each other (answer owner -> question -> answer).
q = name("a.test") + b"\x00\x01\x00\x01"
save("valid-compression-mutual-loop-in-answer",
     hdr1 + q + b"\xc0\x1e" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01")
# Forward pointer.
save("bad-compression-forward", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x40\x00\x01\x00\x01")
# 64-byte label (reserved bits), 63-byte labels making a > 255-byte name.
save("bad-label-64", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\0\0\1\0\1")
save("bad-name-too-long", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1")
# Header counts far beyond the data.
save("valid-bogus-counts", struct.pack(">HHHHHH", 1, 0x8180, 1, 65535, 65535, 65535) + q)
save("bad-too-short", b"\x00\x01\x01")
save("bad-no-question-data", struct.pack(">HHHHHH", 1, 0x0100, 3, 0, 0, 0))
save("valid-no-question-formerr", struct.pack(">HHHHHH", 9, 0x8181, 0, 0, 0, 0))
# rdlength past the end, A record with 3-byte rdata.
save("valid-answer-rdlength-overflow", hdr1 + q + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\xff\xff\x0a")
save("valid-answer-short-a", hdr1 + q + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x03\x0a\x00\x00")
# Two OPT records, OPT in the answer section, unknown type and class.
opt = b"\x00" + struct.pack(">HHIH", 41, 4096, 0, 0)
save("valid-double-opt", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 2) + q + opt + opt)
save("valid-opt-in-answer", struct.pack(">HHHHHH", 1, 0x8180, 1, 1, 0, 0) + q + opt)
save("valid-unknown-type-class", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + name("x.y") + b"\xfd\xe8\x12\x34")
# TCP: length prefix larger than the segment, zero-length message, two messages.
save("tcp-prefix-overflow", b"\xff\xff" + query(5, "t.test", 1))
save("tcp-zero-length", b"\x00\x00\x00\x00")
q1, q2 = query(6, "one.test", 1), query(7, "two.test", 28)
save("tcp-two-messages", struct.pack(">H", len(q1)) + q1 + struct.pack(">H", len(q2)) + q2)
# Non-printable bytes in labels, root name query.
save("valid-binary-label", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x04\x00\x2e\x5c\xff\x00\x00\x01\x00\x01")
save("valid-root-query", struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01")
