#!/usr/bin/env python3
"""Checks API responses against an OpenAPI 3.0 spec.

    tests/api_schema.py SPEC.yaml TRANSCRIPT.jsonl
    tests/api_schema.py --spec-only SPEC.yaml...

A transcript has one JSON object per line, as the Rust API tests write
them: {"method", "path" (no query), "status", "content_type", "body" (the
JSON body as text, or "" when not JSON)}. For every exchange the operation
is looked up by method and path template; its status must be documented,
the content type must be one the spec lists for that status (or none when
it lists none), and a JSON body must validate against the schema.
Requests that match no operation must get a 4xx with an error body.

Needs PyYAML and jsonschema; validates the spec itself with
openapi-spec-validator when that is installed. Exit status 0 when all
conform, 1 otherwise.
"""

import json
import re
import sys

import jsonschema
import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def resolve(spec, ref):
    assert ref.startswith("#/"), ref
    node = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def to_json_schema(spec, node, depth=0):
    """OpenAPI 3.0 schema object -> JSON Schema (refs inlined, nullable)."""
    if depth > 50:
        raise ValueError("schema nesting too deep (recursive $ref?)")
    if isinstance(node, list):
        return [to_json_schema(spec, n, depth + 1) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return to_json_schema(spec, resolve(spec, node["$ref"]), depth + 1)
    out = {}
    for key, value in node.items():
        if key in ("example", "nullable", "description", "default"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(spec, v, depth + 1) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(spec, value, depth + 1)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(spec, v, depth + 1) for v in value]
        else:
            out[key] = value
    if node.get("nullable"):
        if "type" in out and "enum" not in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def operations(spec):
    """(method, compiled path regex, number of templated segments, op)."""
    ops = []
    for template, item in spec.get("paths", {}).items():
        regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "/?$"
        for method, op in item.items():
            if method in ("parameters", "summary", "description", "servers"):
                continue
            ops.append((method.upper(), re.compile(regex), template.count("{"), op, template))
    # Literal paths win over templated ones.
    ops.sort(key=lambda o: o[2])
    return ops


def media(content_type):
    return content_type.split(";")[0].strip().lower()


def check(spec, ops, error_schema, ex):
    """Returns a list of problems with one exchange."""
    method, path, status = ex["method"], ex["path"], ex["status"]
    where = f"{method} {path} -> {status}"
    body = ex.get("body", "")
    ctype = media(ex.get("content_type", ""))
    problems = []
    parsed = None
    if ctype == "application/json":
        try:
            parsed = json.loads(body) if body else None
        except ValueError as e:
            return [f"{where}: invalid JSON body: {e}"]
    if status >= 500:
        problems.append(f"{where}: server error {body}")
    matching = [o for o in ops if o[1].match(path)]
    op = next((o for o in matching if o[0] == method), None)
    if op is None:
        if not 400 <= status < 500:
            problems.append(f"{where}: no operation in the spec, yet not a 4xx")
        if ctype != "application/json":
            problems.append(f"{where}: error without a JSON body")
        else:
            try:
                jsonschema.validate(parsed, error_schema)
            except jsonschema.ValidationError as e:
                problems.append(f"{where}: error body: {e.message}")
        if matching and status != 405 and status != 400:
            problems.append(f"{where}: path exists with other methods, expected 405 (or 400)")
        return problems
    template = op[4]
    responses = op[3].get("responses", {})
    resp = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
    if resp is None:
        problems.append(
            f"{where}: status {status} not documented for {method} {template} "
            f"(documented: {', '.join(sorted(responses))})"
        )
        return problems
    if "$ref" in resp:
        resp = resolve(spec, resp["$ref"])
    content = resp.get("content")
    if not content:
        if body:
            problems.append(f"{where}: documented without a body, got {body[:200]!r}")
        return problems
    documented = {media(k): v for k, v in content.items()}
    if ctype not in documented:
        problems.append(f"{where}: content type {ctype!r} not in {sorted(documented)}")
        return problems
    if ctype == "application/json":
        schema = to_json_schema(spec, documented[ctype].get("schema", {}))
        try:
            jsonschema.validate(parsed, schema)
        except jsonschema.ValidationError as e:
            loc = "/".join(str(p) for p in e.absolute_path)
            problems.append(f"{where}: body does not match the schema at /{loc}: {e.message}")
    return problems


def check_spec(path):
    try:
        from openapi_spec_validator import validate
    except ImportError:
        print(f"note: openapi-spec-validator not installed, {path} itself not validated")
        return True
    try:
        validate(load(path))
    except Exception as e:  # noqa: BLE001 - report any validator failure
        print(f"{path}: invalid OpenAPI document: {e}")
        return False
    return True


def main(argv):
    if len(argv) >= 2 and argv[0] == "--spec-only":
        return 0 if all([check_spec(p) for p in argv[1:]]) else 1
    if len(argv) != 2:
        print(__doc__)
        return 2
    spec_path, transcript = argv
    spec = load(spec_path)
    ops = operations(spec)
    error_schema = to_json_schema(spec, spec["components"]["schemas"]["Error"])
    problems = []
    count = 0
    with open(transcript, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            count += 1
            problems += check(spec, ops, error_schema, json.loads(line))
    for p in problems:
        print(p)
    print(f"{spec_path}: {count - len(problems)} of {count} responses conform" if not problems
          else f"{spec_path}: {len(problems)} problem(s) in {count} responses")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
