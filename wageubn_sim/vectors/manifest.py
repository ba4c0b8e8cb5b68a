"""A bundle's manifest: its schema (`manifest.schema.json`, version 2; version 1 is read), and
the manifest read and checked against it, trusting nothing: a regular file inside the bundle,
strict JSON (no key twice), this tool's schema and version, every field of its type."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..engine.registry import OPS
from ..files.read import UnreadableFile, read_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
SCHEMAS = {1: Path(__file__).with_name("manifest.schema.v1.json"),
           2: Path(__file__).with_name("manifest.schema.json")}
SUPPORTED_VERSIONS = tuple(SCHEMAS)


class BundleError(ValueError):
    """The folder is no bundle this tool can read: missing, without a manifest, another tool's,
    or of an unsupported schema version."""


def layer_op_enum(schema: dict) -> list:
    """The list of op names a version-2 schema allows for a layer (where the registry's ops go)."""
    return schema["properties"]["layers"]["items"]["properties"]["op"]["enum"]


def tensor_role(schema: dict) -> dict:
    """The schema of a tensor's role in a version-2 schema (where the registry's array roles go)."""
    return schema["properties"]["tensors"]["additionalProperties"]["properties"]["role"]


def role_pattern() -> str:
    """The roles a tensor may have: the network's and every layer's values, training's, and
    each op's arrays (its spec's ``array_ranks``)."""
    arrays = sorted({role for spec in OPS.values() for role in spec.array_ranks})
    return (f"^(input|{'|'.join(arrays)}|accumulator|output|error|"
            "(weight|bias|gamma|beta)_(grad_raw|grad|master_before|master_after|momentum_before|momentum_after))$")


def schema(version: int) -> dict:
    """The JSON schema of a manifest version; version 2's layer ops and array roles are the
    engine's (its registry), so that a new op needs no edit here (the shipped file lists them
    for readers, and a test keeps it equal)."""
    data = json.loads(SCHEMAS[version].read_text())
    if version == 2:
        enum = layer_op_enum(data)
        enum[:] = sorted(OPS)
        tensor_role(data)["pattern"] = role_pattern()
    return data


def read_manifest(root: Path) -> tuple[dict | None, list]:
    """(the manifest, failures): BundleError where ``root`` is no bundle this tool reads; the
    failures of a manifest that is one but is unreadable or breaks its schema (then None)."""
    if not root.is_dir():
        raise BundleError(f"{root} is not a folder; give the folder `wageubn-sim vectors` wrote")
    path = root / MANIFEST
    if not os.path.lexists(path):
        raise BundleError(f"{root} has no {MANIFEST}; is it a wageubn-sim vector bundle?")
    if path.is_symlink() or not path.is_file():
        return None, [f"{MANIFEST} is {'a symbolic link' if path.is_symlink() else 'not a regular file'}; "
                      "a bundle's manifest is a regular file inside it"]
    try:
        manifest = read_json(path, "manifest")
    except UnreadableFile as err:
        return None, [str(err)]
    if not isinstance(manifest, dict) or manifest.get("schema") != "wageubn-sim-vectors":
        raise BundleError(f"{path} is not a wageubn-sim vector bundle manifest")
    if manifest.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"{path}: manifest version {manifest.get('version')!r}; this tool reads "
                          f"versions {', '.join(map(str, SUPPORTED_VERSIONS))}")
    import jsonschema
    errors = sorted(jsonschema.Draft202012Validator(schema(manifest["version"])).iter_errors(manifest),
                    key=lambda e: list(map(str, e.absolute_path)))
    failures = [f"{MANIFEST} at {'/'.join(map(str, err.absolute_path)) or '(top)'}: {err.message[:200]}"
                for err in errors]
    return (None if failures else manifest), failures
