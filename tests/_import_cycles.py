"""Print the import cycles among piker_ems modules (imports inside functions and TYPE_CHECKING count); exit 1 if any."""
import ast, pathlib, sys
root = pathlib.Path('piker_ems')
mods = {}
for p in root.rglob('*.py'):
    name = '.'.join(p.with_suffix('').parts)
    if name.endswith('.__init__'): name = name[:-9]
    mods[name] = p
def resolve(cur, is_pkg, node):
    out = []
    if isinstance(node, ast.Import):
        for a in node.names: out.append(a.name)
    else:
        base = cur.split('.') if is_pkg else cur.split('.')[:-1]
        if node.level:
            base = base[:len(base) - (node.level - 1)]
            prefix = '.'.join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module
        subs = [prefix + '.' + a.name for a in node.names if prefix + '.' + a.name in mods]
        out.extend(subs)
        if len(subs) < len(node.names):
            out.append(prefix)
    return [m for m in out if m in mods]
graph = {}
for name, p in mods.items():
    is_pkg = p.name == '__init__.py'
    deps = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            deps.update(d for d in resolve(name, is_pkg, node) if d != name)
    graph[name] = deps
# packages: importing a.b.c implies importing a.b (its __init__) — ignore parent-package edges for cycles
# tarjan SCC
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in graph[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in graph:
    if v not in idx: sc(v)
for comp in sccs:
    print('CYCLE:', sorted(comp))
    for a in sorted(comp):
        print('   ', a, '->', sorted(d for d in graph[a] if d in comp))
print('cycles:', len(sccs))
sys.exit(1 if sccs else 0)
