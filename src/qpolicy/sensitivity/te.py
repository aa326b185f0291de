"""``te``: topological entropy of feature maps (GMPQ-TE), a per-layer importance computed in one forward pass.

For each quantizable layer's output on a minibatch of images that share one label:

* each channel's ``h x h`` map U is a weighted graph on h vertices with edge weights ``max(U, U^T)`` (diagonal
  excluded); edges enter the filtration in descending weight order, one edge per step (ties by position; weights
  compared in float32, the activations' precision); the flag (clique) complex is taken at each step;
* the **birth time** of a map is the first step at which the first Betti number beta_1 is non-zero (0: never);
* a channel's entropy is the Shannon entropy (nats) of its birth times over the images that have one; when fewer
  than ``min_rate`` (10%) of the images have a birth, the paper's rule ``H = eps * log |Omega|`` applies, with
  Omega the possible birth steps (the edges);
* the layer's TE is ``sum_c w_c H_c`` with ``w_c = H_c / sum_c H_c``: higher-entropy channels weigh more
  (``weighting="uniform"`` gives the plain mean instead).

Non-square maps are padded to a square with a value below every entry (padded edges enter last); a Linear layer's
N outputs are placed on a ceil(sqrt(N)) x ceil(sqrt(N)) grid the same way.

Birth times, exactly: if beta_1 = 0 before step t and step t adds edge (u, v), then beta_1 != 0 after it iff u and v
were already connected and have no common neighbour. (A new edge between components adds no cycle. Between
connected vertices it adds one cycle z; z is a boundary iff a triangle (u, v, w) exists, since z minus that
triangle's boundary is an older cycle, and every older cycle was a boundary.) The fast path runs this test for all
maps at once with component labels and neighbour bitmasks, on a top-k of each map's edges (births come early),
stopping once every map has its birth;
:func:`birth_times_reference` computes the same with ripser's persistent homology.

As sensitivity scores (weights and activations alike), two damage shapes:

* ``damage="linear"`` (default, the paper): ``damage[layer][b] = TE * (max_bits - b)``, so the least-damage policy
  is the one maximizing ``sum TE_i * b_i``, GMPQ-TE's objective. Being linear in bits, it favours extreme
  policies (8 bits on some layers, 2 on others) under a tight budget;
* ``damage="noise"``: ``damage[layer][b] = TE * 4**(min_bits - b)``, TE times the relative variance of uniform
  quantization noise at b bits (it shrinks 4x per bit), so an added bit is worth less the more bits a layer has.
  Both shapes give the same layer importance order, so ``te-lp`` applies to either.

``normalize="support"`` divides each channel's entropy by ``log min(N, |Omega|)``, the largest entropy N images can
show over |Omega| possible birth steps: raw entropy grows with the map size (a 32x32 map has 496 possible birth
steps, an 8x8 map 28), which the normalization removes. ``benchmarks/search_quality.py`` measures both options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .._modes import eval_mode
from ..errors import ConfigError
from ..task import task_of
from .base import METRICS

__all__ = ["TEMetric", "birth_times", "birth_times_reference", "channel_entropy", "square_maps"]


def square_maps(out: torch.Tensor) -> np.ndarray:
    """Layer output -> maps (N, C, s, s): conv maps padded to square, Linear outputs on a ceil(sqrt(F)) grid."""
    x = out.detach().float()
    if x.dim() == 2:  # (N, F) -> (N, 1, s, s)
        n, f = x.shape
        s = math.ceil(math.sqrt(f))
        pad = torch.full((n, s * s - f), float(x.min()) - 1.0)
        x = torch.cat([x, pad], dim=1).reshape(n, 1, s, s)
    elif x.dim() == 4 and x.shape[2] != x.shape[3]:
        n, c, h, w = x.shape
        s = max(h, w)
        canvas = torch.full((n, c, s, s), float(x.min()) - 1.0)
        canvas[:, :, :h, :w] = x
        x = canvas
    elif x.dim() != 4:
        raise ConfigError(f"cannot place a layer output of shape {tuple(x.shape)} on a square grid")
    return x.cpu().numpy()


def _edge_weights(maps) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """For maps (M, h, h): edge weights max(U, U^T) above the diagonal, (M, E) float32, and the edges' endpoints.
    The filtration compares weights in float32, the precision of the activations."""
    x = torch.as_tensor(np.asarray(maps)).float()
    m, h = x.shape[0], x.shape[-1]
    iu, ju = np.triu_indices(h, 1)
    flat = x.reshape(m, h * h)
    w = torch.maximum(flat.index_select(1, torch.from_numpy(iu * h + ju)),
                      flat.index_select(1, torch.from_numpy(ju * h + iu)))
    return w + 0.0, iu, ju  # + 0.0 turns -0.0 into +0.0, which compares equal to it


def _filtration_keys(w: np.ndarray) -> np.ndarray:
    """float32 weights (M, E) -> distinct int64 keys whose descending order is the filtration order: descending
    weight, ties by position (the float's bits, made order-preserving, then the position reversed)."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.int32).astype(np.int64)
    bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    e = w.shape[1]
    return (bits << 21) + (e - 1 - np.arange(e, dtype=np.int64))  # E < 2^21, i.e. h <= 2048


def _edge_order(w: torch.Tensor) -> np.ndarray:
    """Every edge of every map in filtration order, (M, E)."""
    return np.argsort(-_filtration_keys(w.numpy()), axis=1)


def _first_cycles(order: np.ndarray, iu: np.ndarray, ju: np.ndarray, h: int, births: np.ndarray,
                  rows: np.ndarray) -> np.ndarray:
    """Run the filtration prefix ``order`` (maps ``rows``, edges in order) and write each map's birth step into
    ``births``; returns which maps had their birth within the prefix."""
    m = len(rows)
    us, vs = iu[order], ju[order]  # (m, K) endpoints in filtration order
    words = (h + 63) // 64
    comp = np.tile(np.arange(h), (m, 1))  # component label of each vertex
    adj = np.zeros((m, h, words), dtype=np.uint64)  # neighbour bitmasks
    done = np.zeros(m, dtype=bool)
    active = np.arange(m)
    one = np.uint64(1)
    for t in range(order.shape[1]):
        if active.size == 0:
            break
        u, v = us[active, t], vs[active, t]
        cu, cv = comp[active, u], comp[active, v]
        common = (adj[active, u] & adj[active, v]).any(axis=1)
        hit = (cu == cv) & ~common
        births[rows[active[hit]]] = t + 1
        done[active[hit]] = True
        keep = ~hit
        a, u, v, cu, cv = active[keep], u[keep], v[keep], cu[keep], cv[keep]
        adj[a, u, v // 64] |= one << (v % 64).astype(np.uint64)
        adj[a, v, u // 64] |= one << (u % 64).astype(np.uint64)
        merge = cu != cv
        if merge.any():
            sel = a[merge]
            block = comp[sel]
            comp[sel] = np.where(block == cv[merge][:, None], cu[merge][:, None], block)
        active = a
    return done


def birth_times(maps: np.ndarray, *, first: int = 128) -> np.ndarray:
    """First filtration step (1-based) with beta_1 != 0 for each map (M, h, h); 0 when none. Exact (see module).

    Births come early (within ~100-200 of a 112x112 map's 6,216 edges), so only the ``first`` strongest edges of
    each map are ordered (a top-k, not a sort); maps without a birth there are redone with 8x as many edges, up to
    all of them. A top-k whose last edge ties with the next one (the tie rule would decide which enters) is redone
    with the exact full order."""
    maps = np.asarray(maps)
    m, h = maps.shape[0], maps.shape[-1]
    births = np.zeros(m, dtype=np.int64)
    if h < 4 or m == 0:  # a flag complex on <= 3 vertices has no 1-cycle that is not a triangle
        return births
    w, iu, ju = _edge_weights(maps)
    e = w.shape[1]
    rows, k = np.arange(m), min(first, e)
    while rows.size:
        sub = w if rows.size == m else w[torch.from_numpy(rows)]
        if k >= e:
            order, ok = _edge_order(sub), np.ones(rows.size, dtype=bool)
        else:
            vals, idx = (t.numpy() for t in torch.topk(sub, k + 1, dim=1, sorted=True))
            ok = vals[:, k - 1] > vals[:, k]  # the top k is one set whatever the tie rule
            vals, idx = vals[:, :k], idx[:, :k]
            order = np.take_along_axis(idx, np.lexsort((idx, -vals), axis=1), 1)  # ties by position
        done = np.zeros(rows.size, dtype=bool)
        if ok.any():
            sel = np.flatnonzero(ok)
            done[sel] = _first_cycles(order[sel], iu, ju, h, births, rows[sel])
        if k >= e:
            break
        rows, k = rows[~done], min(k * 8, e)
    return births


def birth_times_reference(maps: np.ndarray) -> np.ndarray:
    """The same birth times from persistent homology (ripser): the smallest birth among H1 bars of positive
    persistence, with each edge's filtration value set to its step number."""
    from ripser import ripser

    maps = np.asarray(maps)
    m, h = maps.shape[0], maps.shape[-1]
    births = np.zeros(m, dtype=np.int64)
    if h < 2:
        return births
    w, iu, ju = _edge_weights(maps)
    order = _edge_order(w)
    for k in range(m):
        steps = np.empty(len(iu))
        steps[order[k]] = np.arange(1, len(iu) + 1)
        dist = np.zeros((h, h))
        dist[iu, ju] = dist[ju, iu] = steps
        bars = ripser(dist, distance_matrix=True, maxdim=1)["dgms"][1]
        bars = bars[bars[:, 1] > bars[:, 0]]
        births[k] = int(bars[:, 0].min()) if len(bars) else 0
    return births


def channel_entropy(births: np.ndarray, n_edges: int, *, min_rate: float = 0.1, eps: float = 0.01,
                    normalize: str = "none") -> np.ndarray:
    """Entropy (nats) of birth times per channel; ``births`` is (N images, C channels), 0 meaning no birth.
    ``normalize="support"`` divides by ``log min(N, n_edges)``, the largest entropy possible."""
    n, c = births.shape
    out = np.zeros(c)
    floor = eps * math.log(max(n_edges, 1))
    for ch in range(c):
        b = births[:, ch]
        b = b[b > 0]
        if len(b) < min_rate * n:
            out[ch] = floor
            continue
        _, counts = np.unique(b, return_counts=True)
        p = counts / counts.sum()
        out[ch] = float(-(p * np.log(p)).sum())
    if normalize == "support":
        out /= max(math.log(min(n, max(n_edges, 1))), 1e-12)
    return out


def layer_te(entropy: np.ndarray, weighting: str = "entropy") -> float:
    if weighting == "uniform":
        return float(entropy.mean()) if entropy.size else 0.0
    total = entropy.sum()
    return float((entropy * entropy).sum() / total) if total > 0 else 0.0


@METRICS.register("te")
@dataclass(kw_only=True)
class TEMetric:
    """Args: label: class of the images; batch_size: images (taken from the calibration data with that label);
    min_rate, eps: the paper's rule for channels with few births; weighting: "entropy" or "uniform";
    damage: "linear" (the paper's TE * (max_bits - b)) or "noise" (TE * 4**(min_bits - b));
    normalize: "none" or "support" (channel entropy over its largest possible value);
    reference: compute birth times with ripser instead of the fast path."""

    label: int = 0
    batch_size: int = 128
    min_rate: float = 0.1
    eps: float = 0.01
    weighting: str = "entropy"
    damage: str = "linear"
    normalize: str = "none"
    reference: bool = False
    name: str = "te"

    def __post_init__(self) -> None:
        for what, allowed in (("weighting", ("entropy", "uniform")), ("damage", ("linear", "noise")),
                              ("normalize", ("none", "support"))):
            if getattr(self, what) not in allowed:
                raise ConfigError(f"te {what} must be one of {', '.join(allowed)}; got {getattr(self, what)!r}")
        if self.batch_size < 2 or not 0 <= self.min_rate <= 1 or self.eps < 0:
            raise ConfigError("batch_size must be >= 2, min_rate in [0, 1], eps >= 0")

    def config_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    def same_label_batch(self, calib, device) -> torch.Tensor:
        if not task_of(calib).is_classification:
            raise ConfigError("the te metric needs a same-label minibatch: it is for classifiers; for another "
                              "task use fisher, hessian or qerror")
        xs, have = [], 0
        for batch in calib:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ConfigError("the te metric needs labelled batches (x, y)")
            x, y = batch[0], batch[1]
            sel = x[y == self.label]
            xs.append(sel)
            have += len(sel)
            if have >= self.batch_size:
                break
        if have < 2:
            raise ConfigError(f"the calibration data has fewer than 2 images of label {self.label}")
        return torch.cat(xs)[: self.batch_size].to(device)

    @torch.no_grad()
    def layer_scores(self, model, calib, layers) -> dict[str, float]:
        """TE of every layer (higher: more important)."""
        # no copy needed: one forward in eval mode, hooks removed afterwards
        device = next(model.parameters()).device
        x = self.same_label_batch(calib, device)
        outs: dict[str, torch.Tensor] = {}
        handles = [model.get_submodule(li.name).register_forward_hook(
            lambda mod, inp, out, n=li.name: outs.setdefault(n, out.detach())) for li in layers]
        try:
            with eval_mode(model):
                model(x)
        finally:
            for hnd in handles:
                hnd.remove()
        scores = {}
        for li in layers:
            if li.name not in outs:
                scores[li.name] = 0.0
                continue
            maps = square_maps(outs[li.name])  # (N, C, s, s)
            n, c, s, _ = maps.shape
            flat = maps.reshape(n * c, s, s)
            births = (birth_times_reference if self.reference else birth_times)(flat).reshape(n, c)
            ent = channel_entropy(births, s * (s - 1) // 2, min_rate=self.min_rate, eps=self.eps,
                                  normalize=self.normalize)
            scores[li.name] = layer_te(ent, self.weighting)
        return scores

    def score(self, model, calib, *, layers, bits, seed):
        te = self.layer_scores(model, calib, layers)
        lo, top = min(bits), max(bits)
        shape = (lambda b: float(top - b)) if self.damage == "linear" else (lambda b: 4.0 ** (lo - b))
        table = {n: {b: v * shape(b) for b in bits} for n, v in te.items()}
        return table, {n: dict(s) for n, s in table.items()}
