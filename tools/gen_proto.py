"""Generate Python code from proto/ into services/linesight/common/pb (run by `make proto` and the build).

Generated modules import each other as `linesight.v1.x_pb2`; we rewrite those imports so the
code lives inside the `linesight.common.pb` package instead of shadowing the `linesight`
distribution. `--check DIR` generates into DIR and compares with the tree: CI fails when the
committed protos and the generated code disagree.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "linesight" / "common" / "pb"
IMPORT_RE = re.compile(r"^from linesight\.v1 import (\w+) as (\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto file and rewrite intra-package imports."""
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the message above")
        produced = sorted((Path(tmp) / "linesight" / "v1").glob("*.py*"))
        written = []
        for src in produced:
            text = IMPORT_RE.sub(r"from linesight.common.pb import \1 as \2", src.read_text())
            text = text.replace("from linesight.v1 import ", "from linesight.common.pb import ")
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    names = sorted(p.stem for p in written if p.suffix == ".py")
    init = '"""Code generated from proto/linesight/v1 by tools/gen_proto.py. Do not edit."""\n'
    init += "".join(f"from linesight.common.pb import {n} as {n}\n" for n in names)
    (out_dir / "__init__.py").write_text(init)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if services/linesight/common/pb is stale")
    args = parser.parse_args()
    if not args.check:
        files = generate(OUT_DIR)
        print(f"generated {len(files)} files into {OUT_DIR.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = {p.name for p in Path(tmp).iterdir()}
        current = {p.name for p in OUT_DIR.glob("*.py*")} if OUT_DIR.exists() else set()
        _, mismatch, errors = filecmp.cmpfiles(tmp, OUT_DIR, sorted(fresh), shallow=False)
        missing = sorted(fresh - current)
        extra = sorted(current - fresh - {"README.md"})
        if mismatch or errors or missing or extra:
            print(f"generated code is stale: differs={mismatch + errors} missing={missing} extra={extra}")
            print("run `make proto`")
            return 1
    print("generated code matches proto/")
    shutil.rmtree(Path(tmp), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
