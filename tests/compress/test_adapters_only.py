"""compress/ reaches models only through adapters and protocols (ARCHITECTURE.md): no
module under compress/ imports a concrete model class or a family's own module."""

from __future__ import annotations

import ast
from pathlib import Path

COMPRESS = Path(__file__).parents[2] / "compress"
# The models modules compress may import: protocols, adapters, packed formats, errors.
ALLOWED = {"models.adapter", "models.moe_groups", "models.channel_groups", "models.errors",
           "models.qformat"}


def _models_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "models" or n.startswith("models.")}


def test_compress_imports_only_model_protocols():
    # The scan sees imports at all (the protocol imports of requirements.py).
    assert {"models.channel_groups", "models.moe_groups"} <= \
        _models_imports(COMPRESS / "requirements.py")
    found = {}
    for path in sorted(COMPRESS.rglob("*.py")):
        imports = _models_imports(path)
        bad = {n for n in imports if not any(n == a or n.startswith(a + ".") for a in ALLOWED)}
        if bad:
            found[str(path.relative_to(COMPRESS))] = sorted(bad)
    assert found == {}
