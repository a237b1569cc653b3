"""The code base's shape: imports point down (no cycle), and state is owned, not global.

- No import cycle inside piker_ems, counting imports inside functions and under TYPE_CHECKING:
  a cycle means two modules each need the other, so neither can be read, tested or replaced
  alone (``tests/_import_cycles.py`` prints them).
- No class-level state (a mutable container or a ``_current``-style instance slot on a class)
  and no ``global`` rebinding in any function: state lives in objects owned by an actor's
  service task, so a test never resets globals by hand.
"""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / 'piker_ems'

_MUTABLE_CALLS = {'dict', 'list', 'set', 'defaultdict', 'OrderedDict', 'deque', 'Counter'}


def test_no_import_cycles():
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / '_import_cycles.py')],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _class_state(tree: ast.AST) -> list[str]:
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign):
                targets, value = [stmt.target], stmt.value
            elif isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            else:
                continue
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set)) or (
                isinstance(value, ast.Call) and getattr(value.func, 'id', None) in _MUTABLE_CALLS)
            slot = any(n.strip('_') in ('current', 'instance', 'engines', 'singleton') for n in names)
            if (mutable or slot) and not any(n.isupper() for n in names):
                found.append(f'{cls.name}.{",".join(names)} (line {stmt.lineno})')
    return found


def _globals_rebound(tree: ast.AST) -> list[str]:
    return [f'global {", ".join(n.names)} (line {n.lineno})' for n in ast.walk(tree) if isinstance(n, ast.Global)]


def test_no_class_level_or_global_state():
    problems = []
    for path in sorted(PKG.rglob('*.py')):
        tree = ast.parse(path.read_text())
        for what in _class_state(tree) + _globals_rebound(tree):
            problems.append(f'{path.relative_to(ROOT)}: {what}')
    assert not problems, '\n'.join(problems)


def test_the_state_check_can_fail():
    bad = ast.parse(
        'class Router:\n    _current = None\nclass Engine:\n    _engines: dict = {}\n'
        'def f():\n    global X\n    X = 1\n')
    assert len(_class_state(bad)) == 2 and len(_globals_rebound(bad)) == 1
