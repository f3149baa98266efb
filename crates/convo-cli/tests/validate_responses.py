"""Validates live HTTP answers against the response schemas of convo's
OpenAPI document, with the Python ecosystem's validator (jsonschema, Draft
2020-12: OpenAPI 3.1's schema dialect), independently of the Rust code.

    python3 validate_responses.py OPENAPI_JSON < answers.jsonl

Each input line is {"path": "<the document's path template>", "method":
"get", "status": 200, "doc": <the answer's JSON body>}. The schema is the
document's `responses.<status>.content["application/json"].schema` of that
operation; `#/components/...` references resolve inside the document. A path,
status or JSON content the document does not describe is a failure too.
Exit status 1 on any failure.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:convo:openapi"


def pointer(*parts):
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def main():
    document = json.loads(pathlib.Path(sys.argv[1]).read_text())
    resource = Resource(contents=document, specification=DRAFT202012)
    registry = Registry().with_resource(BASE, resource)
    checked = failures = 0
    described = set()
    for number, line in enumerate(sys.stdin, 1):
        case = json.loads(line)
        path, method, status = case["path"], case.get("method", "get"), str(case["status"])
        operation = document["paths"].get(path, {}).get(method)
        response = (operation or {}).get("responses", {}).get(status)
        content = (response or {}).get("content", {}).get("application/json")
        checked += 1
        if content is None or "schema" not in content:
            failures += 1
            print(f"line {number}: {method} {path} {status}: the document describes no JSON answer")
            continue
        described.add((path, status))
        ref = f"{BASE}#/" + pointer("paths", path, method, "responses", status, "content", "application/json", "schema")
        validator = Draft202012Validator({"$ref": ref}, registry=registry)
        errors = sorted(validator.iter_errors(case["doc"]), key=lambda e: list(e.absolute_path))
        if errors:
            failures += 1
            for error in errors[:5]:
                where = "/".join(str(p) for p in error.absolute_path)
                print(f"line {number}: {method} {path} {status} at /{where}: {error.message[:300]}")
    print(f"{checked} answers checked against {len(described)} described responses, {failures} failures")
    sys.exit(1 if failures else 0)


main()
