#!/bin/sh
# Stands in for ssh under `scp -O -S`: called as PROG [ssh options] [--] host command, it
# runs the command locally through relay.py, which records the session into $CAPTURE.
for last; do :; done
exec "$(dirname "$0")/relay.py" "$CAPTURE" sh -c "$last"
