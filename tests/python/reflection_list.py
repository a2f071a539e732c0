"""Lists a busmq server's services through gRPC reflection as a Python user
does with grpcio-reflection (which speaks grpc.reflection.v1alpha), and
resolves one service's methods through the reflected descriptors.

Prints one line per listed service, then "methods <Service>: a,b,..."."""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--describe", required=True, help="a service to resolve")
    args = parser.parse_args()
    with grpc.insecure_channel(args.addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        for answer in stub.ServerReflectionInfo(iter([request]), timeout=10):
            for service in answer.list_services_response.service:
                print(service.name)
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName(args.describe)
        print(f"methods {args.describe}: " + ",".join(m.name for m in service.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
