"""A farm client generated from proto/ with grpcio-tools, as another team
would write one: it registers a node, heartbeats once, discovers peers and
lists the farm. Prints one JSON object with what it saw.

usage: client.py TARGET PROTO_DIR OUT_DIR
"""

import json
import sys
import threading
from pathlib import Path


def generate(proto_dir: Path, out_dir: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p) for p in (proto_dir / "farm" / "v1").glob("*.proto"))
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")


def main() -> None:
    target, proto_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
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
    registered = registry.Register(
        registry_pb2.RegisterRequest(
            name="py-agent", address="127.0.0.1:9", group="py", labels={"lang": "python"}
        ),
        timeout=10,
    )

    done = threading.Event()

    def beats():
        yield registry_pb2.HeartbeatRequest(
            node_id=registered.node_id, secret=registered.secret, seq=7, serving=True
        )
        # Keep the stream open (the node stays healthy) until we are done.
        done.wait(10)

    responses = registry.Heartbeat(beats(), timeout=20)
    acks = [next(responses).ack_seq]

    discovery = discovery_pb2_grpc.DiscoveryStub(channel)
    everyone = discovery.Discover(discovery_pb2.DiscoverRequest(count=100), timeout=10)
    python_only = discovery.Discover(
        discovery_pb2.DiscoverRequest(count=5, labels={"lang": "python"}), timeout=10
    )
    try:
        discovery.Discover(discovery_pb2.DiscoverRequest(count=1001), timeout=10)
        bad_count = "OK"
    except grpc.RpcError as err:
        bad_count = err.code().name

    nodes = farm_pb2_grpc.FarmStub(channel).ListNodes(farm_pb2.ListNodesRequest(), timeout=10)
    done.set()
    responses.cancel()
    print(
        json.dumps(
            {
                "node_id": registered.node_id,
                "secret_len": len(registered.secret),
                "acks": acks,
                "peers": sorted(p.name for p in everyone.peers),
                "python_peers": [p.name for p in python_only.peers],
                "bad_count": bad_count,
                "listed": sorted(n.name for n in nodes.nodes),
            }
        )
    )


if __name__ == "__main__":
    main()
