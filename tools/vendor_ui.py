"""Vendor the labeling UI's front-end libraries into labeling/api/static/vendor/ (committed).

The running service serves these files itself: no Node.js and no CDN at run time, so a plant
network without internet still gets a working UI. This script is the only place npm is used, at
build time: `npm pack` fetches each pinned tarball, its sha512 is checked against the pin below
(a changed tarball stops the script, nothing is written), and the files the UI loads are copied
next to the package's licence. `--check` verifies the committed files against fresh tarballs.

    python tools/vendor_ui.py          # (re)write static/vendor/
    python tools/vendor_ui.py --check  # exit 1 when the committed files differ
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "services/linesight/labeling/api/static/vendor"

# The BSD-3-Clause text, for a package that names the licence but ships no licence file.
BSD3 = """Copyright (c) {holder}
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of conditions
   and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials provided
   with the distribution.
3. Neither the name of the copyright holder nor the names of its contributors may be used to
   endorse or promote products derived from this software without specific prior written
   permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball
    directory: str  # under static/vendor/
    files: tuple[str, ...]  # paths inside the tarball's package/ folder
    licence_file: str = ""  # '' when the package ships none (then `licence_holder` is used)
    licence_holder: str = ""


PACKAGES = (
    Package(
        "openseadragon",
        "6.1.1",
        "sha512-g4iKe2q8B642SaBT3+x4ZF3/8b1TxPPydyjmtrOLgDrlYWMKd9ZXM+1Cb/xa9DVySkvs/7l6HR1nHKfD5F3Tsw==",
        "openseadragon",
        ("build/openseadragon/openseadragon.min.js",),
        licence_file="LICENSE.txt",
    ),
    Package(
        "@annotorious/openseadragon",
        "3.8.10",
        "sha512-APvir1z3DXRbMnQtR9cUG1dhUHp1MurPfjck626UGMrcIyLB342h8zE5QuU8fSp+QJCaAyrJiYmfo/0T1Tva4g==",
        "annotorious",
        ("dist/annotorious-openseadragon.js", "dist/annotorious-openseadragon.css"),
        licence_holder="Rainer Simon (package.json: license BSD-3-Clause)",
    ),
    Package(
        "chart.js",
        "4.6.1",
        "sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==",
        "chartjs",
        ("dist/chart.umd.min.js",),
        licence_file="LICENSE.md",
    ),
)


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(pkg: Package, work: Path) -> Path:
    """`npm pack` the pinned tarball, check its hash, unpack it; returns the package/ folder."""
    out = subprocess.run(
        ["npm", "pack", "--silent", f"{pkg.name}@{pkg.version}", "--pack-destination", str(work)],
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = work / out.stdout.strip().splitlines()[-1]
    got = _integrity(tarball.read_bytes())
    if got != pkg.integrity:
        raise SystemExit(f"{pkg.name}@{pkg.version}: tarball hash {got} is not the pinned {pkg.integrity}")
    dest = work / pkg.directory
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def wanted(pkg: Package, src: Path) -> dict[str, bytes]:
    """File name under static/vendor/<dir>/ -> content, licence included."""
    files = {Path(f).name: (src / f).read_bytes() for f in pkg.files}
    if pkg.licence_file:
        files["LICENSE"] = (src / pkg.licence_file).read_bytes()
    else:
        files["LICENSE"] = BSD3.format(holder=pkg.licence_holder).encode()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    if shutil.which("npm") is None:
        print("npm not found: install Node.js (build time only) to vendor the UI libraries", file=sys.stderr)
        return 2
    manifest = {}
    differ = []
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in PACKAGES:
            files = wanted(pkg, fetch(pkg, Path(tmp)))
            manifest[pkg.directory] = {"package": pkg.name, "version": pkg.version, "sha512": pkg.integrity}
            for name, data in files.items():
                target = VENDOR / pkg.directory / name
                if args.check:
                    if not target.exists() or target.read_bytes() != data:
                        differ.append(str(target.relative_to(ROOT)))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    versions = VENDOR / "VERSIONS.json"
    if args.check:
        if not versions.exists() or versions.read_text() != text:
            differ.append(str(versions.relative_to(ROOT)))
        for path in differ:
            print(f"differs from the pinned package: {path}", file=sys.stderr)
        return 1 if differ else 0
    versions.write_text(text)
    print(f"vendored {len(PACKAGES)} packages into {VENDOR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
