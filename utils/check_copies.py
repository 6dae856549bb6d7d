"""Check that code marked `# Copied from trl_t3d.X.Name` still equals its source (the convention of transformers'
`utils/check_copies.py`, written here for this repository).

A marker sits on the line right above a `def` or `class` (below its decorators, if any) and names the source object
by its dotted path, a module of this repository then a function, a class or `Class.method`:

    # Copied from trl_t3d.models.dream.modeling_dream.DreamMLP with Dream->SDAR
    class SDARMLP(nn.Module):

`with A->B, C->D` lists replacements applied to the source's text, in order, before comparing; `all-casing` after
them applies each to the lower- and upper-case spellings too. The whole object is compared, docstrings and comments
included, after removing the common indentation (a function may be copied as a method and back).

    python utils/check_copies.py                      # exit 1 and a diff per copy that differs
    python utils/check_copies.py --fix_and_overwrite  # rewrite each copy from its source
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(?P<indent>[ \t]*)#\s*Copied from\s+(?P<target>[\w.]+)(?:\s+with\s+(?P<spec>.*?))?\s*$")
REPLACEMENT = re.compile(r"^\s*(?P<old>\S+?)\s*->\s*(?P<new>\S+)\s*$")


@dataclass
class Copy:
    path: Path
    line: int  # 1-based line of the marker
    target: str
    replacements: list[tuple[str, str]]
    start: int  # 0-based first line of the copied object (its first decorator or its def/class line)
    end: int  # 0-based line after its last line


def parse_replacements(spec: str | None) -> list[tuple[str, str]]:
    if not spec:
        return []
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    all_casing = parts and parts[-1] == "all-casing"
    pairs = []
    for part in parts[:-1] if all_casing else parts:
        match = REPLACEMENT.match(part)
        if match is None:
            raise ValueError(f"cannot read the replacement {part!r} (write `Old->New`)")
        pairs.append((match["old"], match["new"]))
    if all_casing:
        pairs += [(old.lower(), new.lower()) for old, new in pairs] + [
            (old.upper(), new.upper()) for old, new in pairs
        ]
    return pairs


def object_span(tree: ast.Module, first_line: int) -> tuple[int, int] | None:
    """(start, end) 0-based lines of the def/class whose first line (decorators included) is `first_line` (1-based)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if start == first_line:
                return start - 1, node.end_lineno
    return None


def find_copies(path: Path) -> list[Copy]:
    text = path.read_text()
    lines = text.splitlines()
    tree = None
    copies = []
    for index, line in enumerate(lines):
        match = MARKER.match(line)
        if match is None:
            continue
        tree = tree or ast.parse(text, filename=str(path))
        span = object_span(tree, index + 2)
        if span is None:
            raise ValueError(f"{path}:{index + 1}: a `# Copied from` marker must sit right above a def or class")
        copies.append(Copy(path, index + 1, match["target"], parse_replacements(match["spec"]), *span))
    return copies


def source_of(target: str, root: Path) -> str:
    """The text of the object `target` names (a module path under `root`, then the object's name)."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = root.joinpath(*parts[:split]).with_suffix(".py")
        if module.is_file():
            names = parts[split:]
            break
    else:
        raise ValueError(f"no module of {target!r} under {root}")
    text = module.read_text()
    body, node = ast.parse(text).body, None
    for name in names:
        node = next(
            (
                n
                for n in body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
            ),
            None,
        )
        if node is None:
            raise ValueError(f"{target!r}: {module.relative_to(root)} has no {name!r} there")
        body = node.body
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return "\n".join(text.splitlines()[start - 1 : node.end_lineno])


def expected_code(copy: Copy, root: Path) -> str:
    code = textwrap.dedent(source_of(copy.target, root))
    for old, new in copy.replacements:
        code = code.replace(old, new)
    return code


def observed_code(copy: Copy, lines: list[str]) -> str:
    return textwrap.dedent("\n".join(lines[copy.start : copy.end]))


def check_copies(paths: list[Path], root: Path = REPO_ROOT, fix: bool = False) -> tuple[int, list[str], int]:
    """(number of marked copies, one message per copy that differs from its source, how many of those name no
    source). With `fix`, each differing copy is rewritten from its source (at the copy's indentation)."""
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))})
    count, problems, errors = 0, [], 0
    for path in files:
        copies = find_copies(path)
        if not copies:
            continue
        lines = path.read_text().splitlines()
        replaced = False
        for copy in reversed(copies):  # bottom up, so that a rewrite keeps the line numbers above it
            count += 1
            name = f"{path.relative_to(root) if path.is_relative_to(root) else path}:{copy.line}"
            try:
                expected = expected_code(copy, root)
            except ValueError as error:  # a marker naming nothing is never fixed
                problems.append(f"{name}: {error}")
                errors += 1
                continue
            observed = observed_code(copy, lines)
            if [s.rstrip() for s in observed.splitlines()] == [s.rstrip() for s in expected.splitlines()]:
                continue
            diff = difflib.unified_diff(
                expected.splitlines(), observed.splitlines(), f"{copy.target} (after replacements)", name, lineterm=""
            )
            problems.append(f"{name}: differs from {copy.target}\n" + "\n".join(diff))
            if fix:
                indent = re.match(r"[ \t]*", lines[copy.start]).group(0)
                lines[copy.start : copy.end] = [indent + s if s else s for s in expected.splitlines()]
                replaced = True
        if replaced:
            path.write_text("\n".join(lines) + "\n")
    return count, problems, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders to check (default: trl_t3d/)")
    parser.add_argument(
        "--fix_and_overwrite", action="store_true", help="rewrite every differing copy from its source"
    )
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="where the dotted paths of the markers start")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    paths = [p.resolve() for p in args.paths] or [root / "trl_t3d"]
    count, problems, errors = check_copies(paths, root, fix=args.fix_and_overwrite)
    for problem in problems:
        print(problem, end="\n\n")
    if problems and args.fix_and_overwrite and not errors:
        print(f"check_copies: rewrote {len(problems)} of {count} marked copies from their sources.")
        return 0
    if problems:
        print(
            f"check_copies: {len(problems)} of {count} marked copies differ from their sources. Make the change in "
            "the source and run `python utils/check_copies.py --fix_and_overwrite`, or drop the marker where the "
            "code really differs."
        )
        return 1
    print(f"check_copies: {count} marked copies equal their sources.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
