"""A short queue flow through stubs generated from busmq's protos.

Run by tests/python_client.rs: it generates Python stubs with grpcio-tools
from proto/ into a temporary directory, as a Python user would, then
attaches, pushes, consumes, leases and acks through them, and checks that
errors carry their google.rpc.ErrorInfo reason.

    python queue_flow.py --proto-dir proto --addr 127.0.0.1:50051
"""

import argparse
import importlib.resources
import pathlib
import sys
import tempfile

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc
from google.rpc import error_details_pb2
from google.protobuf import duration_pb2

TIMEOUT = 10  # seconds, for every call


def generate_stubs(proto_dir: pathlib.Path, out: pathlib.Path) -> None:
    # The well-known types (google/protobuf/duration.proto, ...) ship with
    # grpcio-tools, as with protoc.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protos = sorted(str(p) for p in (proto_dir / "busmq" / "v1").glob("*.proto"))
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ]
    )
    if code != 0:
        sys.exit(f"grpc_tools.protoc failed with {code}")


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status details in {err}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in the details of {err}")


def expect_error(call, code: grpc.StatusCode, reason: str) -> error_details_pb2.ErrorInfo:
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
        info = error_info(err)
        assert info.domain == "busmq", info
        assert info.reason == reason, f"expected reason {reason}, got {info.reason}"
        return info
    raise AssertionError(f"expected {code} {reason}, the call succeeded")


def messages_of(stream) -> list:
    """Every message of a Consume stream, until it ends."""
    events = list(stream)
    assert events and events[0].WhichOneof("event") == "consuming", events[:1]
    return [m for e in events if e.WhichOneof("event") == "messages" for m in e.messages.messages]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path)
    parser.add_argument("--addr", required=True)
    args = parser.parse_args()

    out = pathlib.Path(tempfile.mkdtemp(prefix="busmq-py-"))
    generate_stubs(args.proto_dir.resolve(), out)
    sys.path.insert(0, str(out))
    from busmq.v1 import queues_pb2 as pb, queues_pb2_grpc  # noqa: E402

    with grpc.insecure_channel(args.addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        queues = queues_pb2_grpc.QueuesStub(channel)
        q = "py.flow"

        attached = queues.Attach(
            pb.AttachRequest(queue=q, ttl=duration_pb2.Duration(seconds=30)), timeout=TIMEOUT
        )
        assert not attached.existed and attached.attachments == 1, attached
        info = queues.Info(pb.InfoRequest(queue=q), timeout=TIMEOUT)
        assert info.ttl.seconds == 30 and info.ttl.nanos == 0, info.ttl
        print("attach ok")

        pushed = queues.Push(pb.PushRequest(queue=q, messages=[b"a", b"b", b"c"]), timeout=TIMEOUT)
        assert (pushed.first_id, pushed.last_id) == (1, 3), pushed
        print("push ok")

        # Mode left unset is CONSUME_MODE_UNSPECIFIED, which means unreliable.
        taken = messages_of(queues.Consume(pb.ConsumeRequest(queue=q, max=2), timeout=TIMEOUT))
        assert [(m.id, m.payload) for m in taken] == [(1, b"a"), (2, b"b")], taken
        print("consume ok")

        leased = messages_of(
            queues.Consume(
                pb.ConsumeRequest(
                    queue=q,
                    mode=pb.CONSUME_MODE_LEASE,
                    max=1,
                    visibility_timeout=duration_pb2.Duration(seconds=30),
                ),
                timeout=TIMEOUT,
            )
        )
        assert [(m.id, m.payload, m.attempt) for m in leased] == [(3, b"c", 1)], leased
        token = pb.LeaseToken(id=leased[0].id, attempt=leased[0].attempt)
        acked = queues.Ack(pb.AckRequest(queue=q, lease=token), timeout=TIMEOUT)
        assert acked.removed == 1, acked
        print("lease and ack ok")

        info = expect_error(
            lambda: queues.Ack(pb.AckRequest(queue=q, lease=token), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_LEASE",
        )
        assert info.metadata["queue"] == q and info.metadata["id"] == "3", info.metadata
        expect_error(
            lambda: queues.Push(pb.PushRequest(queue="py.nowhere", messages=[b"x"]), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND,
            "QUEUE_NOT_FOUND",
        )
        expect_error(
            lambda: queues.Info(pb.InfoRequest(queue="py.nowhere"), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND,
            "QUEUE_NOT_FOUND",
        )
        print("errors ok")

        info = queues.Info(pb.InfoRequest(queue=q), timeout=TIMEOUT)
        assert info.count == 0 and info.pending == 0 and info.pushed == 3, info
        print("flow ok")


if __name__ == "__main__":
    main()
