#!/usr/bin/env python3
"""Relay stdin/stdout to a child, recording an ordered transcript.
Record: tag (b'C' client->server, b'S' server->client), u32 BE length, bytes."""
import os, sys, struct, subprocess, threading
out = sys.argv[1]
cmd = sys.argv[2:]
lock = threading.Lock()
f = open(out, 'wb')
def rec(tag, data):
    with lock:
        f.write(tag + struct.pack('>I', len(data)) + data)
        f.flush()
p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
def up():
    while True:
        d = os.read(0, 65536)
        if not d:
            break
        rec(b'C', d)
        p.stdin.write(d)
    p.stdin.close()
t = threading.Thread(target=up, daemon=True)
t.start()
while True:
    d = os.read(p.stdout.fileno(), 65536)
    if not d:
        break
    rec(b'S', d)
    os.write(1, d)
sys.exit(p.wait())
