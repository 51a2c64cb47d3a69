"""A farm client generated from proto/ with grpcio-tools (see client.py),
calling a control plane that requires tokens, each as the `authorization`
metadata of the call. Prints one JSON object with what it saw.

The tokens come from the environment, not the command line:
NODE_TOKEN, VIEWER_TOKEN.

usage: auth_client.py TARGET PROTO_DIR OUT_DIR
"""

import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client import generate  # noqa: E402


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def code_of(call) -> str:
    import grpc

    try:
        call()
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def main() -> None:
    target, proto_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    node, viewer = os.environ["NODE_TOKEN"], os.environ["VIEWER_TOKEN"]
    generate(proto_dir, out_dir)
    sys.path.insert(0, str(out_dir))
    import grpc
    from farm.v1 import (
        discovery_pb2,
        discovery_pb2_grpc,
        farm_pb2,
        farm_pb2_grpc,
        registry_pb2,
        registry_pb2_grpc,
    )

    channel = grpc.insecure_channel(target)
    registry = registry_pb2_grpc.RegistryStub(channel)
    discovery = discovery_pb2_grpc.DiscoveryStub(channel)
    farm = farm_pb2_grpc.FarmStub(channel)

    # As a node: register, heartbeat (the stream carries the token too),
    # discover.
    registered = registry.Register(
        registry_pb2.RegisterRequest(name="py-token", address="127.0.0.1:9"),
        metadata=bearer(node),
        timeout=10,
    )
    done = threading.Event()

    def beats():
        yield registry_pb2.HeartbeatRequest(
            node_id=registered.node_id, secret=registered.secret, seq=3, serving=True
        )
        done.wait(10)

    responses = registry.Heartbeat(beats(), metadata=bearer(node), timeout=20)
    acks = [next(responses).ack_seq]
    peers = discovery.Discover(
        discovery_pb2.DiscoverRequest(count=10), metadata=bearer(node), timeout=10
    )

    # As a viewer: the farm's nodes, but no mutation.
    listed = farm.ListNodes(farm_pb2.ListNodesRequest(), metadata=bearer(viewer), timeout=10)
    done.set()
    responses.cancel()

    print(
        json.dumps(
            {
                "acks": acks,
                "peers": sorted(p.name for p in peers.peers),
                "listed": sorted(n.name for n in listed.nodes),
                "viewer_scale": code_of(
                    lambda: farm.Scale(
                        farm_pb2.ScaleRequest(nodes=1), metadata=bearer(viewer), timeout=10
                    )
                ),
                "node_list": code_of(
                    lambda: farm.ListNodes(
                        farm_pb2.ListNodesRequest(), metadata=bearer(node), timeout=10
                    )
                ),
                "no_token": code_of(
                    lambda: farm.ListNodes(farm_pb2.ListNodesRequest(), timeout=10)
                ),
                "wrong_token": code_of(
                    lambda: farm.ListNodes(
                        farm_pb2.ListNodesRequest(), metadata=bearer("guess"), timeout=10
                    )
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
