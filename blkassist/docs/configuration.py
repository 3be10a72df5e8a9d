"""docs/configuration.md, generated from config/schema.yaml: every key path with its type,
default and description, so the reference cannot drift from what the workflow validates.

    python -m blkassist.docs.configuration            # print the page
    python -m blkassist.docs.configuration --write    # write docs/configuration.md
    python -m blkassist.docs.configuration --check    # exit 1 if the committed page is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from blkassist.config import SCHEMA, load_schema

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
COMMAND = "python -m blkassist.docs.configuration --write"
TYPE_KEYS = {"type", "enum", "const", "pattern"}  # what makes an anyOf part a type, not a rule


def _lookup(root: Mapping, ref: str) -> Mapping:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def resolve(node: Mapping, root: Mapping) -> dict:
    """`node` with its $ref followed and its allOf merged, as the config loader reads it:
    a $ref's siblings (default, description) win over the target, and earlier allOf parts'
    defaults win over later ones (an assistant's recipe over the shared Flux recipe)."""
    node = dict(node)
    while "$ref" in node:
        node = {**_lookup(root, node.pop("$ref")), **node}
    if len(node.get("anyOf", ())) == 1:  # validated as one definition (esrgan degradation)
        node = {**resolve(node.pop("anyOf")[0], root), **node}
    if "allOf" in node:
        parts = [resolve(part, root) for part in node.pop("allOf")]
        merged: dict = {}
        for part in reversed(parts):  # the last part (the base) gives the order of the keys
            for key, value in part.items():
                if key != "properties":
                    merged[key] = value
        properties: dict = {}
        for part in reversed(parts):
            for name, sub in part.get("properties", {}).items():
                properties[name] = {**properties.get(name, {}), **sub}
        node = {**merged, **node, "properties": {**properties, **node.get("properties", {})}}
    return node


def _bounds(node: Mapping) -> list[str]:
    low, high = node.get("minimum"), node.get("maximum")
    out = []
    if low is not None and high is not None:
        out.append(f"{low}..{high}")
    elif low is not None:
        out.append(f">= {low}")
    if "exclusiveMinimum" in node:
        out.append(f"> {node['exclusiveMinimum']}")
    if high is not None and low is None:
        out.append(f"<= {high}")
    if "exclusiveMaximum" in node:
        out.append(f"< {node['exclusiveMaximum']}")
    if "multipleOf" in node:
        out.append(f"multiple of {node['multipleOf']}")
    if "pattern" in node:
        out.append(f"matching `{node['pattern']}`")
    low, high = node.get("minItems"), node.get("maxItems")
    if low is not None and low == high:
        out.append(f"{low} items")
    elif low is not None or high is not None:
        out.append(f"{low or 0}..{high if high is not None else 'n'} items")
    return out


def type_of(node: Mapping, root: Mapping) -> str:
    node = resolve(node, root)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives and any(set(alt) & TYPE_KEYS for alt in alternatives):
        return " or ".join(type_of(alt, root) for alt in alternatives)
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    words = []
    for kind in kinds:
        if kind == "array" and isinstance(node.get("items"), Mapping):
            words.append(f"array of ({type_of(node['items'], root)})")
        elif kind == "object" and isinstance(node.get("additionalProperties"), Mapping):
            words.append("map of NAME to entries")
        else:
            words.append(kind)
    text = " or ".join(words) or ("string" if "pattern" in node else "any")
    return ", ".join([text, *_bounds(node)])


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(node: Mapping, condition: str | None) -> str:
    if "default" not in node:
        return ""
    text = f"`{json.dumps(node['default'], ensure_ascii=False)}`"
    return f"{text} ({condition})" if condition else text


def _condition(node: Mapping) -> tuple[dict, str] | None:
    """Defaults that apply only under an if/then (a mural's scale without target_long_side)."""
    test, then = node.get("if"), node.get("then")
    if not (isinstance(test, Mapping) and isinstance(then, Mapping)):
        return None
    missing = test.get("not", {}).get("required")
    words = f"without {', '.join(missing)}" if missing else "conditional"
    return then.get("properties", {}), words


def rows(path: str, node: Mapping, root: Mapping, required: bool = False,
         condition: str | None = None) -> Iterator[tuple[str, str, str, str]]:  # fmt: skip
    """(key path, type, default, description) for `path` and every key below it."""
    node = resolve(node, root)
    kind = type_of(node, root) + (", required" if required else "")
    yield path, kind, _default(node, condition), node.get("description", "")
    conditional = _condition(node)
    needed = set(node.get("required", ()))
    for name, sub in node.get("properties", {}).items():
        when = None
        if conditional and name in conditional[0] and "default" in conditional[0][name]:
            sub, when = {**sub, **conditional[0][name]}, conditional[1]
        yield from rows(f"{path}.{name}", sub, root, name in needed, when)
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        yield from rows(f"{path}.NAME", extra, root)
    items = node.get("items")
    if isinstance(items, Mapping):
        items = resolve(items, root)
        shaped = [items, *items.get("anyOf", ())]
        for shape in shaped:  # a list of objects, or of strings or objects (prompts)
            shape = resolve(shape, root)
            needed_here = set(shape.get("required", ()))
            for name, sub in shape.get("properties", {}).items():
                yield from rows(f"{path}[].{name}", sub, root, name in needed_here)


def render(schema_path: Path = SCHEMA) -> str:
    root = load_schema(schema_path)
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from config/schema.yaml by `{COMMAND}`: edit the schema, not this"
        " page (tests/test_docs.py checks that they agree). -->",
        "",
        _cell(root.get("description", "")),
        "",
        "`config/schema.yaml` is the one source of these keys and their defaults. A config is",
        "checked against it before any job runs: an unknown key or a wrong value stops the run",
        "with the dotted key named (`murals.mural.tile: 'big' is not of type 'integer'`).",
        "`config/config.yaml` is the demo's config, `config/production.yaml` the 3-gigapixel",
        "example; `--configfile` replaces the demo config, and several combine.",
        "",
        "In the code, the config is validated once, when the workflow parses",
        "(`blkassist.workflow_settings`, with every cross-key check); the rules read the",
        "resulting `WorkflowSettings`, and each job's script reads its sections as typed objects",
        "through `blkassist.job_settings.JobSettings`. None of them has a default of its own.",
        "",
        "In key paths, `NAME` is a name you choose (a mural, a run, a collection) and `[]`",
        "stands for each entry of a list. A default of `{}` means the section's own keys'",
        "defaults apply.",
        "",
        "## Sections",
        "",
    ]
    sections = list(root["properties"])
    lines += [f"- [`{name}`](#{name})" for name in sections]
    for name in sections:
        node = root["properties"][name]
        lines += ["", f"## {name}", ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for path, kind, default, description in rows(name, node, root):
            lines.append(f"| `{path}` | {_cell(kind)} | {_cell(default)} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"write {PAGE.name}")
    action.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        PAGE.write_text(page)
    elif args.check:
        if not PAGE.exists() or PAGE.read_text() != page:
            print(f"docs/configuration.md is stale: run {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
