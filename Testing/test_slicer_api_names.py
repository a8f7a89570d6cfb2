"""Every Slicer name the module uses exists in Slicer 5.10 and 5.12, and the module is packaged.

Slicer cannot run here, so the module's source is checked against the Slicer API name index
(``/work/shared/slicer-api``: names and signatures of Slicer v5.10.0 and v5.12.3; override the
folder with ``SPINECT_SLICER_API_DIR``). Checked:

* ``slicer.<module>.<name>`` and ``from slicer.<module> import <name>``: the Python API exists
  in both versions (5.12-only names only where the code tests for them first), and keyword
  arguments exist in both versions' signatures;
* ``slicer.<Class>``, ``slicer.app``/``slicer.mrmlScene`` chains and capitalised (VTK-style)
  methods: a Python-reachable member of the class (walking base classes) or of a Slicer class;
  VTK's own methods are checked against the installed ``vtk``;
* the ``.ui`` file: every ``self.ui.<name>`` exists, parameter names match the parameter node,
  Slicer widget members called are Python-reachable;
* packaging: CMake lists every file, extension metadata, icon size; no torch/MONAI in Slicer.

Qt and CTK names are not in the index and are not checked.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import subprocess
import sys
import unittest
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SpineCTSegmentation"
MODULE_FILE = MODULE_DIR / "SpineCTSegmentation.py"
LIB_FILES = sorted((MODULE_DIR / "SpineCTSegmentationLib").glob("*.py"))
SOURCE_FILES = [MODULE_FILE] + LIB_FILES
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SpineCTSegmentation.ui"
API_DIR = Path(os.environ.get("SPINECT_SLICER_API_DIR", Path(__file__).resolve().parents[2] / "shared" / "slicer-api"))

#: 5.12-only Python names the code may use, each behind a ``hasattr``/``ImportError`` test.
GUARDED_NEWER = {"slicer.packaging", "slicer.packaging.pip_ensure"}
#: Names outside Slicer core: the PyTorch extension (SlicerPyTorch) and methods that
#: ``@parameterNodeWrapper`` adds at run time (not visible to the index's static scan).
EXTERNAL = {"PyTorchUtils.PyTorchUtilsLogic", "connectGui", "disconnectGui"}
_REACHABLE = ("vtk-python", "pythonqt", "pythonqt(ctor)", "pythonqt(decorator)")


# --------------------------------------------------------------------------- index


def _tsv(name: str) -> list[dict[str, str]]:
    path = API_DIR / name
    if not path.is_file():
        pytest.skip(f"Slicer API index not found at {API_DIR} (set SPINECT_SLICER_API_DIR)")
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@lru_cache(maxsize=None)
def python_api() -> dict[str, dict[str, str]]:
    """``module.qualified_name`` -> row."""
    return {f"{r['module']}.{r['qualified_name']}": r for r in _tsv("python_api.tsv")}


@lru_cache(maxsize=None)
def cxx_bases() -> dict[str, list[str]]:
    bases: dict[str, list[str]] = {}
    for r in _tsv("cxx_classes.tsv"):
        bases.setdefault(r["class"], [])
        if r["superclass"]:
            bases[r["class"]].append(r["superclass"])
    return bases


@lru_cache(maxsize=None)
def cxx_members() -> dict[str, dict[str, set[str]]]:
    """class -> member -> python hints (Python-reachable ones only)."""
    members: dict[str, dict[str, set[str]]] = {}
    for r in _tsv("cxx_methods.tsv"):
        if r["python_hint"] in _REACHABLE:
            members.setdefault(r["class"], {}).setdefault(r["member"], set()).add(r["versions"])
    return members


def class_has(cls: str, member: str) -> bool | None:
    """True/False for Slicer classes; None when the walk reaches a class outside the index."""
    todo, seen, unknown = [cls], set(), False
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        if member in cxx_members().get(c, {}):
            return True
        if c not in cxx_bases():
            unknown = True
            continue
        todo += cxx_bases()[c]
    if unknown and _vtk_class_has(cls, member):
        return True
    return None if unknown else False


def _vtk_class_has(cls: str, member: str) -> bool:
    vtk = pytest.importorskip("vtk")
    # Walk to the first VTK base that the installed vtk knows.
    todo = [cls]
    while todo:
        c = todo.pop()
        if hasattr(vtk, c):
            return hasattr(getattr(vtk, c), member)
        todo += cxx_bases().get(c, [])
    return False


@lru_cache(maxsize=None)
def any_slicer_member(member: str) -> bool:
    return any(member in m for m in cxx_members().values())


# --------------------------------------------------------------------------- source scan


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return None


def _slicer_chains(tree: ast.AST) -> dict[str, list[ast.AST]]:
    """``slicer.x.y`` chains (longest) with the nodes where they occur, aliases resolved."""
    aliases = {"slicer": "slicer"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer" and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "slicer" and a.asname:
                    aliases[a.asname] = a.name
    chains: dict[str, list[ast.AST]] = {}
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Attribute, ast.Name)) or isinstance(parents.get(node), ast.Attribute):
            continue
        dotted = _dotted(node)
        if not dotted:
            continue
        head, _, rest = dotted.partition(".")
        if head in aliases:
            full = aliases[head] + ("." + rest if rest else "")
            chains.setdefault(full, []).append(node)
    for full in set(aliases.values()) - {"slicer"}:
        chains.setdefault(full, [])
    return chains


def _split_python_name(full: str) -> tuple[str, str] | None:
    """(module, qualified name) for ``full`` in the Python API, trying longest module first."""
    parts = full.split(".")
    modules = {r["module"] for r in python_api().values()}
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if module in modules:
            return module, ".".join(parts[i:])
    return None


def _check_chain(full: str) -> str | None:
    """None if ``full`` exists in Slicer, else a message."""
    parts = full.split(".")
    if len(parts) == 1:
        return None
    if parts[1] in ("app", "mrmlScene"):
        cls = {"app": "qSlicerApplication", "mrmlScene": "vtkMRMLScene"}[parts[1]]
        if len(parts) > 2 and class_has(cls, parts[2]) is False:
            return f"{full}: {cls} has no Python-reachable '{parts[2]}'"
        return None
    if parts[1] in cxx_bases():
        if len(parts) > 2 and class_has(parts[1], parts[2]) is False:
            return f"{full}: {parts[1]} has no Python-reachable '{parts[2]}'"
        return None
    modules = {r["module"]: r["versions"] for r in python_api().values()}
    if full in modules:  # a module: 5.12-only modules must be guarded
        if all(r["versions"] == "v5.12.3-only" for r in python_api().values() if r["module"] == full) and full not in GUARDED_NEWER:
            return f"{full}: module only in Slicer 5.12"
        return None
    split = _split_python_name(full)
    if split is None:
        return f"{full}: not a Slicer Python module, class or runtime attribute"
    module, name = split
    qualified = name.split(".")[0]
    row = python_api().get(f"{module}.{qualified}")
    if row is None:
        return f"{full}: {module} has no '{qualified}'"
    if row["versions"] != "both" and f"{module}.{qualified}" not in GUARDED_NEWER:
        return f"{full}: only in {row['versions']} (the module supports Slicer 5.10+)"
    return None


def _sig_params(signature: str) -> set[str] | None:
    """Parameter names of ``f(a, b=1, **kw)``; None if it takes ``**kwargs``."""
    fn = ast.parse(f"def f{signature[signature.index('('):]}: pass").body[0]
    if fn.args.kwarg is not None:
        return None
    return {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}


def _check_call_keywords(full: str, call: ast.Call) -> list[str]:
    modules = {r["module"]: r["versions"] for r in python_api().values()}
    if full in modules:  # a module: 5.12-only modules must be guarded
        if all(r["versions"] == "v5.12.3-only" for r in python_api().values() if r["module"] == full) and full not in GUARDED_NEWER:
            return f"{full}: module only in Slicer 5.12"
        return None
    split = _split_python_name(full)
    if split is None:
        return []
    row = python_api().get(".".join(split))
    if row is None or not row["signature"]:
        return []
    problems = []
    signatures = [row["signature"]] + ([row["signature_v5.10.0_if_different"]] if row["signature_v5.10.0_if_different"] else [])
    for signature in signatures:
        params = _sig_params(signature)
        if params is None:
            continue
        for kw in call.keywords:
            if kw.arg and kw.arg not in params:
                problems.append(f"{full}(..., {kw.arg}=...): not a parameter of {signature}")
    return problems


def _module_trees():
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in SOURCE_FILES]


def test_slicer_python_names_and_classes_exist_in_slicer_5_10_and_5_12():
    problems = []
    for path, tree in _module_trees():
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for full, nodes in _slicer_chains(tree).items():
            message = _check_chain(full)
            if message:
                problems.append(f"{path.name}: {message}")
            for node in nodes:
                call = parents.get(node)
                if isinstance(call, ast.Call) and call.func is node:
                    problems += [f"{path.name}: {p}" for p in _check_call_keywords(full, call)]
    assert problems == [], "\n".join(problems)


def _own_names(trees) -> set[str]:
    """Names defined by the module itself (classes, functions, attributes, enum members)."""
    names = set()
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names |= {t.id for t in ast.walk(target) if isinstance(t, ast.Name)}
                    names |= {t.attr for t in ast.walk(target) if isinstance(t, ast.Attribute)}
            elif isinstance(node, ast.AnnAssign):
                names |= {t.id for t in ast.walk(node.target) if isinstance(t, ast.Name)}
    return names


def test_vtk_style_methods_exist_on_slicer_or_vtk_classes():
    """Capitalised attributes (``node.GetSegmentation()``) belong to some Slicer or VTK class."""
    vtk = pytest.importorskip("vtk")
    trees = _module_trees()
    own = _own_names(trees)
    used_vtk = {a.attr for _, t in trees for a in ast.walk(t) if isinstance(a, ast.Attribute) and _dotted(a.value) == "vtk"}
    vtk_members = set().union(*(dir(getattr(vtk, c)) for c in used_vtk | {"vtkObject", "vtkImageData", "vtkDataObject"}))
    problems = []
    for path, tree in trees:
        python_modules = {"qt", "ctk"}  # Qt/CTK are not indexed; the rest are Python's own
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                python_modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] not in ("slicer", "vtk")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] not in ("slicer", "vtk", "SpineCTSegmentationLib"):
                python_modules |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr[:1].isupper() or node.attr in own:
                continue
            root = (_dotted(node.value) or "").split(".")[0]
            if root in python_modules:
                continue
            if root == "vtk" and _dotted(node.value) == "vtk":
                if not hasattr(vtk, node.attr):
                    problems.append(f"{path.name}: vtk.{node.attr}")
                continue
            if not (any_slicer_member(node.attr) or node.attr in cxx_bases() or node.attr in vtk_members):
                problems.append(f"{path.name}:{node.lineno}: {node.attr}")
    assert problems == [], "\n".join(problems)


def test_scripted_module_base_class_members_exist():
    """``self.x`` used in Widget/Logic/Test but not defined there comes from Slicer's base classes."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    own = _own_names([(MODULE_FILE, tree)])
    bases = {
        "SpineCTSegmentationWidget": ["slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget", "slicer.util.VTKObservationMixin"],
        "SpineCTSegmentationLogic": ["slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic"],
        "SpineCTSegmentationTest": ["slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest"],
    }
    problems = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in bases):
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                name = node.attr
                if name in own or name.startswith("_"):
                    continue
                if any(f"{b}.{name}" in python_api() for b in bases[cls.name]):
                    continue
                if cls.name.endswith("Test") and hasattr(unittest.TestCase, name):
                    continue
                problems.append(f"{cls.name}: self.{name}")
    assert problems == [], "\n".join(problems)


def test_newer_names_are_behind_a_version_test():
    """5.12-only APIs are used only after checking that they exist (Slicer 5.10 lacks them)."""
    text = (MODULE_DIR / "SpineCTSegmentationLib" / "dependencies.py").read_text(encoding="utf-8")
    assert 'hasattr(packaging, "pip_ensure")' in text and "except ImportError" in text


def test_external_names_are_the_documented_ones():
    """The only non-core names are PyTorchUtils (SlicerPyTorch) and parameterNodeWrapper's GUI methods."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in SOURCE_FILES)
    assert "PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=" in text
    for name in EXTERNAL:
        assert name in text, f"{name} is no longer used: drop it from EXTERNAL"


# --------------------------------------------------------------------------- .ui file


def _ui_widgets() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget") if w.get("name")}


def test_ui_widgets_used_by_the_widget_exist_and_slicer_widget_calls_resolve():
    widgets = _ui_widgets()
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _dotted(node.value) == "self.ui":
            if node.attr not in widgets:
                problems.append(f"self.ui.{node.attr}: not in {UI_FILE.name}")
    for node in ast.walk(tree):
        dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
        if dotted and dotted.startswith("self.ui.") and dotted.count(".") == 3:
            widget, member = dotted.split(".")[2:]
            cls = widgets.get(widget, "")
            if cls.startswith(("qMRML", "qSlicer")) and class_has(cls, member) is False:
                problems.append(f"self.ui.{widget}.{member}: {cls} has no Python-reachable '{member}'")
    for cls in set(widgets.values()):
        if cls.startswith(("qMRML", "qSlicer")):
            assert cls in cxx_bases(), cls
    assert problems == [], "\n".join(problems)


#: Parameter node fields that hold state, not a widget's value (the triangle mode and last report).
STATE_ONLY_FIELDS = {"triangleMode", "triangleReport"}


def test_ui_parameter_names_match_the_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SpineCTSegmentationParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    root = ET.parse(UI_FILE).getroot()
    bound = {
        p.find("string").text
        for w in root.iter("widget")
        for p in w.findall("property")
        if p.get("name") == "SlicerParameterName"
    }
    assert STATE_ONLY_FIELDS <= fields
    assert bound == fields - STATE_ONLY_FIELDS


# --------------------------------------------------------------------------- packaging


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def _module_files() -> tuple[list[str], list[str]]:
    """(Python files, other files) of the module folder that Slicer must install, sorted."""
    skip = ("__pycache__", ".egg-info")
    files = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*")
        if p.is_file() and p.name != "CMakeLists.txt" and not p.name.endswith(".pyc")
        and not any(s in part for part in p.parts for s in skip) and p.relative_to(MODULE_DIR).parts[0] != "Testing"
    )
    return [f for f in files if f.endswith(".py")], [f for f in files if not f.endswith(".py")]


def write_module_cmake() -> Path:
    """Rewrite the two file lists of ``SpineCTSegmentation/CMakeLists.txt`` from the folder's files."""
    path = MODULE_DIR / "CMakeLists.txt"
    python, other = _module_files()
    scripts = ["${MODULE_NAME}.py"] + [f for f in python if f != "SpineCTSegmentation.py"]
    text = path.read_text(encoding="utf-8")
    for variable, items in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", other)):
        body = "".join(f"  {item}\n" for item in items)
        text = re.sub(rf"set\({variable}\n.*?\n  \)", lambda m: f"set({variable}\n{body}  )", text, count=1, flags=re.S)
    path.write_text(text)
    return path


def test_module_cmake_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {s.replace("${MODULE_NAME}", "SpineCTSegmentation") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    resources = set(_cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    python, other = _module_files()
    hint = " (run `python Testing/test_slicer_api_names.py` to rewrite the lists)"
    assert sorted(set(python) - scripts) == [], "not in MODULE_PYTHON_SCRIPTS" + hint
    assert sorted(set(other) - resources) == [], "not in MODULE_PYTHON_RESOURCES" + hint
    assert sorted((scripts | resources) - set(python) - set(other)) == [], "listed but missing" + hint
    for call in ("slicerMacroBuildScriptedModule(", "WITH_GENERIC_TESTS", "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)"):
        assert call in text


def test_extension_cmake_metadata_and_icon():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert values["EXTENSION_DEPENDS"] == "PyTorch"
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DESCRIPTION", "EXTENSION_CONTRIBUTORS"):
        assert values.get(key), key
    assert values["EXTENSION_ICONURL"].endswith("Resources/SpineCTSegmentation.png")
    assert values["EXTENSION_SCREENSHOTURLS"].endswith("Resources/Screenshots/phantom_3d.png")
    assert "add_subdirectory(SpineCTSegmentation)" in text
    from PIL import Image

    for icon in (REPO / "Resources" / "SpineCTSegmentation.png", MODULE_DIR / "Resources" / "Icons" / "SpineCTSegmentation.png"):
        with Image.open(icon) as image:
            assert (image.format, image.size) == ("PNG", (128, 128))


def test_slicer_process_never_imports_torch_or_monai():
    """The module and what it imports from spinect load no torch/MONAI (only the subprocess does).

    Importing ``spinect.manifest`` (export for training) may only load what Slicer ships plus
    ``EXPORT_REQUIREMENTS``, which the logic installs (after asking) before exporting.
    """
    banned = {"torch", "monai"}
    for path, tree in _module_trees():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules);"
        "import SpineCTSegmentationLib.process, SpineCTSegmentationLib.options, SpineCTSegmentationLib.terminology,"
        " SpineCTSegmentationLib.dependencies, spinect.manifest;"
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    sys.path.insert(0, str(MODULE_DIR))
    from SpineCTSegmentationLib.dependencies import EXPORT_REQUIREMENTS

    slicer_ships = {"numpy", "SimpleITK", "swig_runtime_data5", "packaging"}
    export = {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in EXPORT_REQUIREMENTS}
    assert loaded & banned == set()
    assert sorted(loaded - slicer_ships - export - {"spinect", "SpineCTSegmentationLib"}) == []


if __name__ == "__main__":
    print(f"wrote {write_module_cmake()}")
