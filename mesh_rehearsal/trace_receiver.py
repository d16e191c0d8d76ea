"""The mesh's trace receiver for ``./manage_all.sh mesh up``: mesh_rehearsal/otlp_receiver.py's OTLP/HTTP
receiver listening on the mesh network's bridge, appending every span it gets to a JSON-lines file
(one object per span: service, name, kind, trace and span ids, parent, attributes).

    python -m mesh_rehearsal.trace_receiver --host 10.213.7.1 --port-file PORT --out spans.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import threading
from pathlib import Path

from .otlp_receiver import OtlpReceiver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with OtlpReceiver(host=args.host) as receiver:
        args.port_file.write_text(str(receiver.port))
        written = 0
        while not stop.wait(0.5):
            spans = receiver.snapshot()
            if len(spans) > written:
                with args.out.open("a") as out:
                    for span in spans[written:]:
                        out.write(json.dumps(dataclasses.asdict(span)) + "\n")
                written = len(spans)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
