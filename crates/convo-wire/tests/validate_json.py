"""Validates JSON documents against convo's JSON Schemas with the Python
ecosystem's validator (jsonschema, Draft 2020-12), independently of the Rust
code that generated them.

    python3 validate_json.py SCHEMAS_DIR < cases.jsonl

Every schema file under SCHEMAS_DIR is first checked against the 2020-12
meta-schema. Each input line is {"schema": "<file>", "valid": true|false,
"doc": <document>}; a document that validates when it should not (or the
reverse) is reported. Exit status 1 on any surprise.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator
from referencing import Registry, Resource


def main():
    root = pathlib.Path(sys.argv[1])
    schemas = {}
    for path in sorted(root.rglob("*.schema.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        schemas[path.relative_to(root).as_posix()] = schema
    # A schema may name another by its $id (a reply's events are events).
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    validators = {
        rel: Draft202012Validator(s, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for rel, s in schemas.items()
    }
    checked = surprises = 0
    for number, line in enumerate(sys.stdin, 1):
        case = json.loads(line)
        validator = validators[case["schema"]]
        errors = list(validator.iter_errors(case["doc"]))
        checked += 1
        if bool(errors) == case["valid"]:
            surprises += 1
            if surprises <= 20:
                why = errors[0].message if errors else "it validated"
                print(f"line {number}: expected valid={case['valid']} against {case['schema']}: {why}\n  {json.dumps(case['doc'])[:400]}")
    print(f"{len(validators)} schemas meet the 2020-12 meta-schema; {checked} documents checked, {surprises} surprises")
    sys.exit(1 if surprises else 0)


main()
