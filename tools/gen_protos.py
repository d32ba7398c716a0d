#!/usr/bin/env python3
"""Regenerate scheduler/_proto/ from protos/**/*.proto: protobuf classes, .pyi types, grpclib stubs.

The one way the generated code is made; tests/test_proto_fresh.py runs `generate()` into a
temporary folder and fails when the committed files differ. The .proto files are mapped to the
virtual path `scheduler/_proto/` so the generated imports are absolute package imports that
work from an installed wheel. protos/etcd/ holds etcd's own API (its client), generated into
scheduler/_proto/etcd/.

Usage: python tools/gen_protos.py
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "scheduler/_proto"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run grpcio-tools' protoc with the grpclib plugin; return the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(PROTOS.rglob("*.proto"))
    plugin = pathlib.Path(sys.executable).parent / "protoc-gen-grpclib_python"
    args = [
        "protoc",
        f"--proto_path={PACKAGE}={PROTOS}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpclib_python_out={out_dir}",
    ]
    if plugin.exists():
        args.append(f"--plugin=protoc-gen-grpclib_python={plugin}")
    args += [f"{PACKAGE}/{source.relative_to(PROTOS).as_posix()}" for source in sources]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = sorted((out_dir / PACKAGE).rglob("*_*.py*"))
    return [path for path in written if path.stem.endswith(("_pb2", "_grpc"))]


def main() -> None:
    files = generate(ROOT)
    for path in files:
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
