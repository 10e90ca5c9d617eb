""".proto source -> a FileDescriptorSet, with grpcio-tools' bundled protoc.

The result includes every import (``--include_imports``), as Envoy's transcoder needs a
self-contained set. ``google/api/annotations.proto`` and ``http.proto`` are not shipped by
grpcio-tools, so a copy of their declarations lives in ``protoc_include/`` and is always on
the include path; the well-known types (``google/protobuf/*.proto``) come with grpcio-tools.

protoc runs as a child process so that its messages can be reported as one line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import PolicyInvalid

__all__ = ["VENDORED_INCLUDE", "compile_proto"]

VENDORED_INCLUDE = Path(__file__).with_name("protoc_include")


def _well_known_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).parent / "_proto"


def compile_proto(source: str | Path, includes: Sequence[str | Path] = ()) -> bytes:
    """Compile ``source`` (and its imports) into a serialised FileDescriptorSet.

    The file's own directory is searched first, then ``includes``, then the vendored
    google/api files and the well-known types. Errors raise PolicyInvalid naming --proto.
    """
    path = Path(source).resolve()
    if not path.is_file():
        raise PolicyInvalid(f"--proto: cannot read {source}: no such file")
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        raise PolicyInvalid("--proto: grpcio-tools is not installed") from None
    search = [path.parent, *(Path(i).resolve() for i in includes), VENDORED_INCLUDE]
    search.append(_well_known_include())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptor.pb"
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *[f"--proto_path={p}" for p in search],
            "--include_imports",
            f"--descriptor_set_out={out}",
            path.name,
        ]
        proc = subprocess.run(
            args, cwd=path.parent, capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            reason = lines[0] if lines else f"{path.name}: protoc exited {proc.returncode}"
            reason = reason.replace(str(path), str(source))  # the path as the user gave it
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            raise PolicyInvalid(f"--proto: {reason}{more}")
        return out.read_bytes()
