import subprocess
import sys


def test_search_package_does_not_import_torch():
    # a fresh interpreter: importing the search (and reading a table, solving a budget) must not pull in torch
    code = (
        "import sys, qpolicy, qpolicy.search, qpolicy.costs, qpolicy.budget, qpolicy.policy\n"
        "from qpolicy.budget import Budget\n"
        "from qpolicy.layers import LayerInfo\n"
        "from qpolicy.sensitivity import SensitivityTable\n"
        "from qpolicy.search import search\n"
        "ls = [LayerInfo(name=n, kind='conv', params=100, macs=1000, in_shape=(10,), out_shape=(1,), order=i)"
        " for i, n in enumerate('abc')]\n"
        "s = {n: {2: 2.0, 8: 0.0} for n in 'abc'}\n"
        "t = SensitivityTable(metric='x', bits=(2, 8), layers=tuple(ls), weight=s, act=s)\n"
        "search(t, Budget(size=0.5), strategy='ilp')\n"
        "search(t, Budget(size=0.5), strategy='te-lp')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
