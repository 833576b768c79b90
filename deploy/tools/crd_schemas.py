"""Turn CustomResourceDefinitions into the JSON schema files kubeconform reads.

    python3 deploy/tools/crd_schemas.py OUT_DIR CRD.yaml [CRD.yaml ...]

Writes OUT_DIR/<group>/<kind>_<version>.json (kind in lower case) for every served version, the
layout of kubeconform's `-schema-location '.../{{ .Group }}/{{ .ResourceKind }}_{{
.ResourceAPIVersion }}.json'`. The conversion is that of kubeconform's openapi2jsonschema.py:
OpenAPI v3 extensions become JSON Schema (`x-kubernetes-int-or-string`, `nullable`), and objects
with declared properties reject unknown keys (strict), unless the CRD preserves unknown fields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def convert(crd_path: Path, out_dir: Path) -> list[Path]:
    written = []
    crd = yaml.safe_load(crd_path.read_text(encoding="utf-8"))
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"].lower()
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        target = out_dir / group / f"{kind}_{version['name']}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(schema, indent=1, sort_keys=True), encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    for crd in argv[1:]:
        for path in convert(Path(crd), out_dir):
            print(f"crd_schemas: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
