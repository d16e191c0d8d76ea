"""svc_common.observability.access_log's request ids: random version-4 UUIDs, different in every forked worker."""

import os
import uuid

from svc_common.observability.access_log import new_request_id


def test_request_ids_are_version_4_uuids_in_their_usual_spelling():
    for request_id in (new_request_id() for _ in range(1000)):
        parsed = uuid.UUID(request_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, request_id)


def test_request_ids_do_not_repeat():
    assert len({new_request_id() for _ in range(100_000)}) == 100_000


def test_forked_workers_make_different_request_ids():
    """gunicorn forks its workers from one master: each must draw its own ids, not the master's."""
    new_request_id()  # the generator has state in the parent before the fork
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: write its next ids and leave at once
        os.write(write_end, ",".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        childs = pipe.read().split(",")
    os.waitpid(child, 0)
    parents = [new_request_id() for _ in range(3)]
    assert len(childs) == 3 and not set(childs) & set(parents)
