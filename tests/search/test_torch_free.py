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
        "from qpolicy.latency import LatencyTable, Stat, layer_signature\n"
        "st = Stat(median=1.0, q1=1.0, q3=1.0, n=3)\n"
        "lt = LatencyTable(model='m', target='ort-cpu', layers=layer_signature(ls), batches=(1,), base='int8',"
        " base_ms={1: st}, float_ms={1: st}, delta_ms={n: {'float': {1: st}, 'int8w8': {1: st}} for n in 'abc'})\n"
        "search(t, Budget(latency=2.5, latency_table=lt), strategy='ilp', act_bits=8)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
