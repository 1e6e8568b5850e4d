"""API keys of the CLIENTS file: `python -m image_gateway.keys new <client>` prints a new key once and adds its
SHA-256 to the client (the client is created, with no routes, when missing); `revoke <client> <sha256>`
removes a hash. The file is CLIENTS (or --file); it is rewritten whole under a temporary name and renamed
into place, so a gateway that re-reads it never sees half a file. Rotate a key: `new`, hand the new key
out, then `revoke` the old hash; both keys work in between.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tomllib

from image_gateway.clients import NAME, build_book, key_hash, parse_document


def load_document(path: str) -> dict:
    if not os.path.exists(path):
        return {"clients": []}
    with open(path, encoding="utf-8") as file:
        text = file.read()
    return tomllib.loads(text) if path.endswith(".toml") else json.loads(text)


def save_document(path: str, document: dict) -> None:
    """Write the file whole, checked by the gateway's own parser first, then rename it into place."""
    text = dump_toml(document) if path.endswith(".toml") else json.dumps(document, indent=2) + "\n"
    build_book(parse_document(text, path.endswith(".toml")), None)     # ValueError: the file stays as it was
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)            # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(document: dict) -> str:
    """The CLIENTS document as TOML: one [[clients]] table per client, routes as inline tables."""
    blocks = []
    for client in document.get("clients", []):
        lines = ["[[clients]]"] + [f"{key} = {toml_value(value)}" for key, value in client.items()
                                   if not isinstance(value, dict)]
        for key, value in client.items():
            if isinstance(value, dict):
                lines += [f"[clients.{key}]"] + [f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def client_entry(document: dict, name: str) -> dict:
    for entry in document.setdefault("clients", []):
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    entry = {"name": name, "keys_sha256": [], "routes": {}}
    document["clients"].append(entry)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_gateway.keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=os.environ.get("CLIENTS"), help="the CLIENTS file (default: $CLIENTS)")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="print a new key for the client and add its hash")
    new.add_argument("client")
    revoke = commands.add_parser("revoke", help="remove a key hash from the client")
    revoke.add_argument("client")
    revoke.add_argument("sha256")
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("name the CLIENTS file: --file PATH or the CLIENTS variable")
    if not NAME.match(args.client):
        parser.error("a client name is 1-64 of A-Z a-z 0-9 _ . - (not starting with . _ -)")
    try:
        document = load_document(args.file)
        entry = client_entry(document, args.client)
        hashes = entry.setdefault("keys_sha256", [])
        if args.command == "new":
            key = secrets.token_urlsafe(32)
            hashes.append(key_hash(key))
        elif args.sha256.lower() not in hashes:
            print(f"client {args.client!r} has no key hash {args.sha256}", file=sys.stderr)
            return 1
        else:
            hashes.remove(args.sha256.lower())
        save_document(args.file, document)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    if args.command == "new":
        print(key)          # shown once: only its hash is stored
        print(f"added to client {args.client!r} in {args.file} (sha256 {key_hash(key)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
