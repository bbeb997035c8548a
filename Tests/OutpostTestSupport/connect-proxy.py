#!/usr/bin/env python3
"""A tiny HTTP CONNECT proxy for the tests: one thread per client, logs each request line
to LOG, and with --deny answers 403 to everything (a proxy that refuses). With port 0 it
binds any free port and, given --port-file, writes the port there (aside, then renamed).
It exits by itself after --lifetime seconds, so a test that dies cannot leave it behind."""
import argparse, os, select, socket, threading

parser = argparse.ArgumentParser()
parser.add_argument("--listen", required=True)   # address:port
parser.add_argument("--log", required=True)
parser.add_argument("--deny", action="store_true")
parser.add_argument("--port-file")
parser.add_argument("--lifetime", type=float, default=600)
args = parser.parse_args()
host, port = args.listen.rsplit(":", 1)
lock = threading.Lock()

def log(line):
    with lock, open(args.log, "a") as f:
        f.write(line + "\n")

def serve(client):
    with client:
        client.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = client.recv(1024)
            if not chunk:
                return
            head += chunk
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        log(first)
        parts = first.split()
        if args.deny or len(parts) != 3 or parts[0] != "CONNECT":
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        target_host, target_port = parts[1].rsplit(":", 1)
        try:
            upstream = socket.create_connection((target_host, int(target_port)), timeout=5)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            socks = [client, upstream]
            while True:
                readable, _, _ = select.select(socks, [], [], 5)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, int(port)))
server.listen(16)
if args.port_file:
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.rename(args.port_file + ".tmp", args.port_file)
threading.Timer(args.lifetime, lambda: os._exit(0)).start()
log("listening")
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
