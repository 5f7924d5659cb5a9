"""Call any method of a gRPC server that offers reflection, from JSON.

Needs only grpcio and grpcio-reflection (both installed with jitauth), no
stubs of the service: the message types are fetched from the server.

    python examples/reflection/call.py 127.0.0.1:50051 list
    python examples/reflection/call.py 127.0.0.1:50051 \\
        jitauth.v1.Authorizer/Authorize \\
        '{"account_id": "acme", "subject": {"id": "alice",
          "roles": ["analyst"]}, "action": "reports.export",
          "resource": {"type": "report"}, "context": {"env": "prod"}}'

Prints the response as JSON; exits 2 with the status on an RPC error.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    target, method = argv[0], argv[1]
    body = argv[2] if len(argv) == 3 else "{}"

    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if method == "list":
            print("\n".join(database.get_services()))
            return 0

        service_name, _, method_name = method.rpartition("/")
        pool = descriptor_pool.DescriptorPool(database)
        descriptor = pool.FindServiceByName(service_name) \
            .methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(descriptor.input_type)
        response_cls = message_factory.GetMessageClass(
            descriptor.output_type)
        call = channel.unary_unary(
            "/%s/%s" % (service_name, method_name),
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString)
        try:
            response = call(json_format.Parse(body, request_cls()),
                            timeout=10)
        except grpc.RpcError as exc:
            print("error: %s: %s" % (exc.code().name, exc.details()),
                  file=sys.stderr)
            return 2
    print(json.dumps(json_format.MessageToDict(
        response, preserving_proto_field_name=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
