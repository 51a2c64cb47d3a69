"""A catalog client generated from proto/ with grpcio-tools (see client.py),
as another team would write one: it indexes a few names with their
dependencies, queries, gets and lists them, and meets the catalog's
refusals. Prints one JSON object with what it saw.

usage: catalog_client.py TARGET PROTO_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client import generate  # noqa: E402


def main() -> None:
    target, proto_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    generate(proto_dir, out_dir)
    sys.path.insert(0, str(out_dir))
    import grpc
    from farm.v1 import catalog_pb2, catalog_pb2_grpc

    catalog = catalog_pb2_grpc.CatalogStub(grpc.insecure_channel(target))

    def refusal(call):
        try:
            call()
            return {"code": "OK"}
        except grpc.RpcError as err:
            return {"code": err.code().name, "message": err.details()}

    indexed = []
    for name, dependencies in [
        ("zlib", []),
        ("openssl@3", []),
        ("curl", ["openssl@3", "zlib", ""]),
        ("gtk+", []),
        ("libsigc++", ["gtk+"]),
        ("ñandú", ["libsigc++"]),
    ]:
        catalog.Index(
            catalog_pb2.IndexRequest(name=name, dependencies=dependencies), timeout=10
        )
        indexed.append(name)
    replaced = catalog.Index(
        catalog_pb2.IndexRequest(name="curl", dependencies=["zlib", "openssl@3"]),
        timeout=10,
    ).replaced

    def query(name):
        return catalog.Query(catalog_pb2.QueryRequest(name=name), timeout=10).indexed

    got = catalog.Get(catalog_pb2.GetRequest(name="zlib"), timeout=10)
    page = catalog.List(catalog_pb2.ListRequest(prefix="lib", page_size=10), timeout=10)
    first = catalog.List(catalog_pb2.ListRequest(page_size=2), timeout=10)
    second = catalog.List(
        catalog_pb2.ListRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    seen = {
        "queried": {name: query(name) for name in indexed + ["git", "Zlib"]},
        "replaced": replaced,
        "zlib": {"dependencies": list(got.dependencies), "dependents": list(got.dependents)},
        "curl": list(
            catalog.Get(catalog_pb2.GetRequest(name="curl"), timeout=10).dependencies
        ),
        "lib": list(page.names),
        "pages": [list(first.names), list(second.names)],
        "total": first.total,
        "missing_dependency": refusal(
            lambda: catalog.Index(
                catalog_pb2.IndexRequest(name="git", dependencies=["curl", "pcre2"]),
                timeout=10,
            )
        ),
        "has_dependents": refusal(
            lambda: catalog.Remove(catalog_pb2.RemoveRequest(name="zlib"), timeout=10)
        ),
        "bad_name": refusal(
            lambda: catalog.Index(catalog_pb2.IndexRequest(name="a|b"), timeout=10)
        ),
        "not_indexed": refusal(
            lambda: catalog.Get(catalog_pb2.GetRequest(name="git"), timeout=10)
        ),
        "removed_absent": catalog.Remove(
            catalog_pb2.RemoveRequest(name="git"), timeout=10
        ).removed,
        "removed_leaf": catalog.Remove(
            catalog_pb2.RemoveRequest(name="ñandú"), timeout=10
        ).removed,
    }
    print(json.dumps(seen, ensure_ascii=False))


if __name__ == "__main__":
    main()
