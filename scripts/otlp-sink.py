"""An OTLP/gRPC trace endpoint that accepts every export and keeps nothing,
for measuring what exporting traces costs the process that exports them
(scripts/bench-metrics.sh with TRACES=1). Needs grpcio.

    python3 scripts/otlp-sink.py --listen 127.0.0.1:4317

Prints the exports and bytes it received when stopped (SIGTERM or Ctrl-C)."""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:4317")
    args = parser.parse_args()
    received = {"exports": 0, "bytes": 0}
    lock = threading.Lock()

    def export(request: bytes, context) -> bytes:
        with lock:
            received["exports"] += 1
            received["bytes"] += len(request)
        # An empty ExportTraceServiceResponse: every span accepted.
        return b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(args.listen) == 0:
        print(f"cannot listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1)
    print(f"otlp-sink: {received['exports']} exports, {received['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
