"""utils/check_copies.py: code marked `# Copied from` equals its source (after the marker's replacements), so the model
code shared by the native families cannot drift apart silently."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_check_copies():
    spec = importlib.util.spec_from_file_location("check_copies", ROOT / "utils" / "check_copies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_copies = _load_check_copies()

SOURCE = '''import torch


class LlamaNorm(torch.nn.Module):
    """Scales by the RMS of a Llama's hidden states."""

    def forward(self, llama_states):
        return llama_states * torch.rsqrt(llama_states.pow(2).mean(-1, keepdim=True) + 1e-6)


def rotate(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
'''

COPY = '''import torch


# Copied from pkg.source.LlamaNorm with Llama->Qwen, llama->qwen
class QwenNorm(torch.nn.Module):
    """Scales by the RMS of a Qwen's hidden states."""

    def forward(self, qwen_states):
        return qwen_states * torch.rsqrt(qwen_states.pow(2).mean(-1, keepdim=True) + 1e-6)


class Model:
    # Copied from pkg.source.rotate
    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
'''


@pytest.fixture
def package(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "source.py").write_text(SOURCE)
    (tmp_path / "pkg" / "copy.py").write_text(COPY)
    return tmp_path


def test_the_marked_model_code_equals_its_sources():
    count, problems, errors = check_copies.check_copies([ROOT / "trl_t3d"], ROOT)
    assert not problems, "\n\n".join(problems)
    assert not errors


SHARED_FUNCTIONS = ("rotate_half", "apply_rotary_pos_emb", "repeat_kv", "eager_attention_forward", "attend")


def test_the_blocks_the_families_share_are_defined_once():
    """The families derive their shared code from `models/modeling_common.py` (no copy left to drift): the shared
    helpers are defined there only, and each family's RMSNorm / RoPE / SwiGLU class subclasses the common one."""
    import ast
    import importlib

    from trl_t3d.models import modeling_common

    definitions = {}
    for path in sorted((ROOT / "trl_t3d" / "models").rglob("modeling_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in SHARED_FUNCTIONS:
                definitions.setdefault(node.name, []).append(path.name)
    assert definitions == {name: ["modeling_common.py"] for name in SHARED_FUNCTIONS}

    kinds = {"RMSNorm": modeling_common.RMSNorm, "RotaryEmbedding": modeling_common.RotaryEmbedding}
    checked = 0
    for name in (
        "dream.modeling_dream",
        "llada.modeling_llada",
        "sdar.modeling_sdar",
        "llada2.modeling_llada2_moe",
        "llada_moe.modeling_lladamoe",
    ):
        module = importlib.import_module(f"trl_t3d.models.{name}")
        for attribute, value in vars(module).items():
            if not isinstance(value, type) or value.__module__ != module.__name__:
                continue
            for suffix, base in kinds.items():
                if attribute.endswith(suffix):
                    assert issubclass(value, base), f"{name}.{attribute} does not derive from {base.__name__}"
                    checked += 1
            if attribute.endswith("MLP"):
                assert issubclass(value, modeling_common.SwiGLUMLP), f"{name}.{attribute} is not the common SwiGLU"
                checked += 1
    assert checked == 14  # 5 RMSNorms, 5 RoPEs, 4 MLPs (LLaDA's MLP lives in its block, under published names)


def test_equal_copies_pass_with_replacements_and_as_a_method(package):
    assert check_copies.check_copies([package / "pkg"], package) == (2, [], 0)


@pytest.mark.parametrize(
    "old, new",
    [
        ("+ 1e-6)\n\n\nclass Model", "+ 1e-5)\n\n\nclass Model"),  # a constant changed in the copy
        ('"""Scales by the RMS of a Qwen', '"""Scales by the RMS norm of a Qwen'),  # the docstring too
        ("        return torch.cat((-x2, x1), dim=-1)", "        return torch.cat((x2, x1), dim=-1)"),  # a method copy
    ],
)
def test_an_altered_copy_is_caught_and_fixed(package, old, new, capsys):
    copy = package / "pkg" / "copy.py"
    assert COPY.count(old) == 1
    copy.write_text(COPY.replace(old, new))
    count, problems, errors = check_copies.check_copies([package / "pkg"], package)
    assert count == 2 and len(problems) == 1 and errors == 0
    assert "differs from pkg.source." in problems[0]
    assert any(line.startswith("+") and new.splitlines()[0].strip() in line for line in problems[0].splitlines())
    # the command line fails, then --fix_and_overwrite rewrites the copy from its source
    argv = [str(package / "pkg"), "--root", str(package)]
    assert check_copies.main(argv) == 1
    assert "1 of 2 marked copies differ" in capsys.readouterr().out
    assert check_copies.main([*argv, "--fix_and_overwrite"]) == 0
    assert copy.read_text() == COPY
    assert check_copies.main(argv) == 0


def test_an_altered_source_is_caught_in_its_copies(package):
    source = package / "pkg" / "source.py"
    source.write_text(SOURCE.replace("x.chunk(2, dim=-1)", "x.chunk(2, dim=1)"))
    count, problems, _ = check_copies.check_copies([package / "pkg"], package)
    assert len(problems) == 1 and "copy.py:13: differs from pkg.source.rotate" in problems[0]


def test_a_marker_naming_nothing_is_an_error(package):
    copy = package / "pkg" / "copy.py"
    copy.write_text(COPY.replace("pkg.source.rotate", "pkg.source.rotate_half"))
    count, problems, errors = check_copies.check_copies([package / "pkg"], package, fix=True)
    assert errors == 1 and "has no 'rotate_half'" in problems[0]
    assert check_copies.main([str(package / "pkg"), "--root", str(package), "--fix_and_overwrite"]) == 1
