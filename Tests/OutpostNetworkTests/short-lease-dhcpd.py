#!/usr/bin/env python3
"""A minimal DHCP server with very short leases, so the namespace tests can watch a client
renew at T1, rebind at T2 and lose its lease at expiry (dnsmasq's minimum lease is 2 minutes).
Answers DISCOVER with OFFER and REQUEST with ACK for one fixed address; logs each message."""
import argparse, socket, struct

parser = argparse.ArgumentParser()
parser.add_argument("--device", required=True)
parser.add_argument("--server", required=True)     # our address, also router and server id
parser.add_argument("--address", required=True)    # the one address handed out
parser.add_argument("--lease", type=int, default=4)
parser.add_argument("--log", required=True)
args = parser.parse_args()

def log(line):
    with open(args.log, "a") as f:
        f.write(line + "\n")

def ip(text):
    return socket.inet_aton(text)

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.device.encode() + b"\0")
sock.bind(("0.0.0.0", 67))
log("listening")
subnet = args.server.rsplit(".", 1)[0]
while True:
    data, _ = sock.recvfrom(2048)
    if len(data) < 240 or data[0] != 1 or data[236:240] != b"\x63\x82\x53\x63":
        continue
    xid, flags, ciaddr, chaddr = data[4:8], data[10:12], data[12:16], data[28:44]
    kind, i = None, 240
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, length = data[i], data[i + 1]
        if code == 53 and length == 1:
            kind = data[i + 2]
        i += 2 + length
    if kind not in (1, 3):
        continue
    log({1: "DISCOVER", 3: "REQUEST"}[kind] + (" ciaddr=" + socket.inet_ntoa(ciaddr) if ciaddr != b"\0\0\0\0" else ""))
    reply = bytes([2, 1, 6, 0]) + xid + b"\0\0" + flags + ciaddr + ip(args.address) + ip(args.server) + b"\0" * 4 + chaddr
    reply += b"\0" * 192 + b"\x63\x82\x53\x63"
    reply += bytes([53, 1, 2 if kind == 1 else 5]) + bytes([54, 4]) + ip(args.server)
    reply += bytes([51, 4]) + struct.pack("!I", args.lease) + bytes([1, 4]) + ip("255.255.255.0")
    reply += bytes([3, 4]) + ip(args.server) + bytes([6, 4]) + ip(subnet + ".53") + bytes([255])
    target = socket.inet_ntoa(ciaddr) if ciaddr != b"\0\0\0\0" else "255.255.255.255"
    sock.sendto(reply, (target, 68))
