#!/bin/sh
# Debian's redis-server, started without a configuration file, runs in protected mode and refuses
# every client that is not on loopback; the upstream image is built without it, and the stack's
# clients are other containers.
if [ "$1" = redis-server ]; then
    shift
    exec redis-server --protected-mode no "$@"
fi
exec "$@"
