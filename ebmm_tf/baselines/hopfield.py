"""Classical Hopfield network baselines for the binary-string protocol (paper Table 1).

This module uses numpy only (importing it through the ``ebmm_tf`` package still loads TensorFlow,
which ``ebmm_tf/__init__.py`` imports); the default Table 1 evaluation takes about 10 s on 2 cores.

Network
-------
A Hopfield network over d units with states s in {-1, +1}^d is parametrised by a symmetric weight
matrix W [d, d] and a threshold (bias) vector b [d]:
``memory_size = d (d - 1) / 2 + d`` floats (8256 for d = 128), the budget every model of Table 1 gets.
All rules implemented here use **b = 0** (no thresholds; the patterns are unbiased +-1 strings).

Writing rules (``HopfieldNetwork(rule).write(patterns [..., N, d]) -> W [..., d, d]``):

- ``"hebb"``: ``W = (1/d) sum_mu x_mu x_mu^T``, diagonal set to zero.
- ``"storkey"``: Storkey's incremental rule in the exact form of Storkey (1997) and Storkey &
  Valabregue (1999): the local field excludes both i and j, and the diagonal is kept at zero
  throughout: ``W^0 = 0``; for each pattern x = x_nu in the given order,
  ``h_ij = sum_{k != i, j} W^{nu-1}_ik x_k``,
  ``W^nu_ij = W^{nu-1}_ij + (1/d) (x_i x_j - x_i h_ji - h_ij x_j)`` for i != j, ``W^nu_ii = 0``.
- ``"storkey_simple"``: the widespread simplified form whose local field excludes only i,
  ``h_ij := h_i = sum_{k != i} W^{nu-1}_ik x_k`` (= ``(W x)_i`` with the zero diagonal), otherwise as
  ``"storkey"``. This variant reproduces the paper's Storkey row within 0.5 bit; the exact form does
  not (up to 3.8 bits off; docs/hopfield_table1.md).
- ``"pinv"``: pseudo-inverse (projection) rule with zero diagonal (Kanter & Sompolinsky 1987):
  ``W = X X^+`` for X = [d, N] with the patterns as columns (``X^+`` = ``np.linalg.pinv(X)``, which
  equals ``X (X^T X)^{-1} X^T`` when the patterns are linearly independent), i.e. the orthogonal
  projector onto the span of the patterns, then ``W_ii = 0``. This fits the 8256-float budget (a
  zero-diagonal symmetric matrix) and is the variant close to the paper's pseudo-inverse row (within
  0.5 bit except at N = 64: 6.4 vs 4.3, see docs/hopfield_table1.md).
- ``"pinv_diag"``: the same projector with its diagonal kept (Personnaz et al. 1985; self-couplings
  W_ii ~ N/d). Reported for comparison; its self-couplings freeze noisy queries for larger N. Its d
  diagonal floats take the place of the (zero) threshold vector, so the budget is still 8256.

Retrieval (``recall``)
----------------------
Asynchronous updates of the unclamped units only, in sweeps; every sweep visits each unclamped unit
of a query exactly once in a fresh random order (each query its own permutation):
``s_i <- +1 if u_i > tol, -1 if u_i < -tol, s_i otherwise (tie: keep the current state)``,
``u_i = sum_j W_ij s_j + b_i`` (the sum includes j = i, which only matters for ``"pinv_diag"``,
whose diagonal is non-zero). ``tol = 1e-10``. Because W is symmetric with a non-negative diagonal and a unit
only flips when that strictly lowers the energy ``-1/2 s^T W s - b^T s``, the dynamics always reach a
fixed point; retrieval stops when a full sweep changes no bit, or after ``max_sweeps`` sweeps (the
number of queries that hit the cap is reported). Clamped units are never touched.

Protocol (Appendix A.2, ``binary_string_queries`` / ``evaluate_table1``)
-----------------------------------------------------------------------
128-dim uniform +-1 patterns, N in {16, 32, 48, 64, 96} written per batch; the query of each stored
pattern keeps 64 uniformly chosen bits (clamped during retrieval) and replaces the other 64 by fresh
uniform +-1 values; error = Hamming distance over all 128 bits, averaged over patterns.

CLI::

    python -m ebmm_tf.baselines.hopfield [--rules=hebb,storkey,pinv] [--min_patterns=1000]
        [--min_batches=1] [--seed=0] [--output=path.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

RULES = ("hebb", "storkey", "storkey_simple", "pinv", "pinv_diag")

# Paper, Appendix A.2, Table 1 (number of error bits), N = 16, 32, 48, 64, 96.
TABLE1_NUM_PATTERNS = (16, 32, 48, 64, 96)
PAPER_TABLE1 = {
    "hebb": (0.4, 5.0, 9.8, 13.0, 16.5),
    "storkey": (0.0, 0.9, 6.3, 11.3, 17.1),
    "pinv": (0.0, 0.0, 0.3, 4.3, 22.5),
}
PAPER_ROW_NAMES = {
    "hebb": "Hopfield network, Hebb rule",
    "storkey": "Hopfield network, Storkey rule",
    "pinv": "Hopfield network, pseudo-inverse rule",
}
PAPER_KEY = {
    "hebb": "hebb",
    "storkey": "storkey",
    "storkey_simple": "storkey",
    "pinv": "pinv",
    "pinv_diag": "pinv",
}

DIM = 128
NUM_KEPT = 64
TIE_TOL = 1e-10


# ------------------------------------------------------------------------------------------------
# Protocol: patterns and queries.
# ------------------------------------------------------------------------------------------------
def random_patterns(rng: np.random.Generator, shape) -> np.ndarray:
    """Uniform +-1 patterns (float64) of the given shape."""
    return rng.choice(np.array([-1.0, 1.0]), size=shape)


def binary_string_queries(patterns: np.ndarray, rng: np.random.Generator, num_kept: int = NUM_KEPT):
    """Distortion of the binary-string protocol.

    For every pattern (last axis = d) keep ``num_kept`` uniformly chosen positions and replace all other
    positions by fresh uniform +-1 values. Returns ``(queries, clamp)``: ``queries`` has the shape and
    dtype of ``patterns``; ``clamp`` is a boolean array of the same shape, True at the kept positions.
    """
    patterns = np.asarray(patterns)
    d = patterns.shape[-1]
    if not 0 <= num_kept <= d:
        raise ValueError(f"num_kept={num_kept} must be in [0, {d}]")
    keys = rng.random(patterns.shape)
    ranks = np.argsort(np.argsort(keys, axis=-1), axis=-1)  # a uniform random permutation per row
    clamp = ranks < num_kept
    noise = random_patterns(rng, patterns.shape).astype(patterns.dtype)
    queries = np.where(clamp, patterns, noise)
    return queries, clamp


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance along the last axis (after sign; 0 counts as +1)."""
    return np.sum(np.where(a >= 0, 1, -1) != np.where(b >= 0, 1, -1), axis=-1)


# ------------------------------------------------------------------------------------------------
# The network.
# ------------------------------------------------------------------------------------------------
class HopfieldNetwork:
    """Hopfield network with a fixed writing rule; see the module docstring for the exact rules.

    ``write`` and ``recall`` accept any number of leading batch axes: ``patterns [..., N, d]`` gives
    ``W [..., d, d]``, one independent network per written set; ``recall(W [..., d, d], queries [..., B,
    d], ...)``. A 2-D ``W`` with 2-D queries is one network and a batch of queries.
    """

    def __init__(self, rule: str, dim: int = DIM):
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
        self.rule = rule
        self.dim = int(dim)

    @property
    def memory_size(self) -> int:
        """Floats of memory: a symmetric zero-diagonal matrix plus a threshold vector (8256 for d=128)."""
        d = self.dim
        return d * (d - 1) // 2 + d

    def bias(self) -> np.ndarray:
        """The threshold vector b of every rule here: zeros [d]."""
        return np.zeros(self.dim)

    # -- writing -------------------------------------------------------------------------------------
    def write(self, patterns: np.ndarray) -> np.ndarray:
        x = np.asarray(patterns, dtype=np.float64)
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"patterns must be [..., N, {self.dim}], got {x.shape}")
        if self.rule == "hebb":
            w = np.einsum("...ni,...nj->...ij", x, x) / self.dim
            _zero_diagonal(w)
        elif self.rule in ("storkey", "storkey_simple"):
            w = self._storkey(x, exclude_j=self.rule == "storkey")
        else:  # pseudo-inverse variants
            xt = np.swapaxes(x, -1, -2)  # [..., d, N], patterns as columns
            w = xt @ np.linalg.pinv(xt)  # X X^+ = X (X^T X)^{-1} X^T for independent patterns
            w = 0.5 * (w + np.swapaxes(w, -1, -2))  # remove round-off asymmetry
            if self.rule == "pinv":
                _zero_diagonal(w)
        return w

    def _storkey(self, x: np.ndarray, exclude_j: bool) -> np.ndarray:
        d = self.dim
        w = np.zeros(x.shape[:-2] + (d, d))
        for nu in range(x.shape[-2]):
            xv = x[..., nu, :]  # [..., d]
            wx = np.einsum("...ij,...j->...i", w, xv)  # sum over all k of W_ik x_k
            diag = np.diagonal(w, axis1=-2, axis2=-1)
            h_i = wx - diag * xv  # sum_{k != i} W_ik x_k
            if exclude_j:
                # h[i, j] = sum_{k != i, j} W_ik x_k = (W x)_i - W_ii x_i - W_ij x_j (used for i != j)
                h = h_i[..., :, None] - w * xv[..., None, :]
            else:
                h = np.broadcast_to(h_i[..., :, None], w.shape)
            outer = xv[..., :, None] * xv[..., None, :]
            hx = h * xv[..., None, :]  # [i, j] = h_ij x_j ;  its transpose [i, j] = x_i h_ji
            # (hx + hx^T) is exactly symmetric in floating point, so W stays exactly symmetric.
            w = w + (outer - (hx + np.swapaxes(hx, -1, -2))) / d
            _zero_diagonal(w)
        return w

    # -- reading -------------------------------------------------------------------------------------
    def recall(
        self,
        weights: np.ndarray,
        queries: np.ndarray,
        clamp: np.ndarray,
        rng: np.random.Generator,
        bias: np.ndarray | None = None,
        max_sweeps: int = 100,
        return_info: bool = False,
    ):
        """Asynchronous retrieval with clamped units; see the module docstring.

        Args:
          weights: [..., d, d] (one network per leading index) or [d, d].
          queries: [..., B, d] +-1 start states (same leading axes as ``weights``).
          clamp: bool, broadcastable to ``queries``; True = unit fixed to its query value.
          rng: numpy Generator for the update orders.
          bias: threshold vector [d] (or broadcastable to [..., d]); default zeros.
          max_sweeps: cap on full sweeps per query.
          return_info: if True also return a dict with ``sweeps`` (per query, including the final
            no-change sweep), ``converged`` (per query) and ``num_capped``.
        Returns:
          retrieved +-1 states with the shape of ``queries`` (float64) [, info].
        """
        w = np.asarray(weights, dtype=np.float64)
        s = np.array(queries, dtype=np.float64)  # copy
        d = self.dim
        if w.shape[-2:] != (d, d) or s.shape[-1] != d:
            raise ValueError(f"bad shapes: weights {w.shape}, queries {s.shape}")
        if s.ndim < 2:
            raise ValueError("queries must be [..., B, d]")
        lead = s.shape[:-2]
        if w.ndim == 2:
            w = np.broadcast_to(w, lead + (d, d))
        if w.shape[:-2] != lead:
            raise ValueError(f"leading axes of weights {w.shape[:-2]} and queries {lead} differ")
        clamp = np.broadcast_to(np.asarray(clamp, dtype=bool), s.shape)
        if np.any(np.abs(s) != 1.0):
            raise ValueError("queries must be +-1")
        b = np.zeros(d) if bias is None else np.asarray(bias, dtype=np.float64)
        b = np.broadcast_to(b, lead + (d,))

        # Flatten the leading axes: S networks, B queries each.
        num_b = s.shape[-2]
        num_s = int(np.prod(lead)) if lead else 1
        w = w.reshape(num_s, d, d)
        s = s.reshape(num_s, num_b, d)
        free = ~clamp.reshape(num_s, num_b, d)
        b = b.reshape(num_s, 1, d)
        n_free = free.sum(-1)  # [S, B]
        max_free = int(n_free.max()) if n_free.size else 0
        s_idx = np.arange(num_s)[:, None]
        sweeps = np.zeros((num_s, num_b), dtype=np.int64)
        converged = np.zeros((num_s, num_b), dtype=bool)
        active = np.ones((num_s, num_b), dtype=bool)
        for _ in range(max_sweeps):
            if not active.any() or max_free == 0:
                converged |= active
                break
            # Random order of the free units of every query; clamped units sorted to the end.
            keys = rng.random((num_s, num_b, d)) + (~free) * 2.0
            order = np.argsort(keys, axis=-1)
            changed = np.zeros((num_s, num_b), dtype=bool)
            for t in range(max_free):
                idx = order[:, :, t]  # [S, B]
                step = active & (t < n_free)
                rows = w[s_idx, idx]  # [S, B, d]: W[idx, :]
                field = (
                    np.einsum("sbd,sbd->sb", rows, s)
                    + np.take_along_axis(np.broadcast_to(b, (num_s, num_b, d)), idx[..., None], -1)[..., 0]
                )
                old = np.take_along_axis(s, idx[..., None], -1)[..., 0]
                new = np.where(field > TIE_TOL, 1.0, np.where(field < -TIE_TOL, -1.0, old))
                new = np.where(step, new, old)
                changed |= new != old
                np.put_along_axis(s, idx[..., None], new[..., None], -1)
            sweeps += active
            done = active & ~changed
            converged |= done
            active &= changed
        out = s.reshape(lead + (num_b, d))
        if not return_info:
            return out
        info = {
            "sweeps": sweeps.reshape(lead + (num_b,)),
            "converged": converged.reshape(lead + (num_b,)),
            "num_capped": int((~converged).sum()),
        }
        return out, info


def _zero_diagonal(w: np.ndarray) -> None:
    d = w.shape[-1]
    w[..., np.arange(d), np.arange(d)] = 0.0


# ------------------------------------------------------------------------------------------------
# Table 1 evaluation.
# ------------------------------------------------------------------------------------------------
def evaluate_table1(
    rule: str,
    num_patterns_list=TABLE1_NUM_PATTERNS,
    min_patterns: int = 1000,
    seed: int = 0,
    min_batches: int = 1,
    dim: int = DIM,
    num_kept: int = NUM_KEPT,
    max_sweeps: int = 100,
    chunk_patterns: int = 8192,
) -> dict:
    """Table 1 protocol for one rule.

    For each N: ``num_batches = max(min_batches, ceil(min_patterns / N))`` independent batches; each batch
    writes N fresh uniform +-1 patterns into a new network and retrieves every one of them from its
    distorted query. Batches for a given (seed, N) are identical across rules (paired comparison).

    Returns ``{N: {"mean", "p5", "p95", "std_batch_mean", "num_batches", "num_patterns",
    "memory_size", "mean_sweeps", "max_sweeps_used", "num_capped", "max_sweeps"}}`` where mean is the
    Hamming error averaged over all patterns and p5/p95 are the 5th/95th percentiles of the per-batch
    mean errors.
    """
    net = HopfieldNetwork(rule, dim)
    results = {}
    for n in num_patterns_list:
        n = int(n)
        num_batches = max(int(min_batches), math.ceil(min_patterns / n))
        # Independent streams per N (and for data vs. retrieval order), shared across rules.
        data_rng, read_rng = (np.random.default_rng(ss) for ss in np.random.SeedSequence([seed, n]).spawn(2))
        batch_errors = []
        sweeps_all = []
        capped = 0
        per_chunk = max(1, chunk_patterns // n)
        for start in range(0, num_batches, per_chunk):
            nb = min(per_chunk, num_batches - start)
            patterns = random_patterns(data_rng, (nb, n, dim))
            queries, clamp = binary_string_queries(patterns, data_rng, num_kept)
            weights = net.write(patterns)
            out, info = net.recall(weights, queries, clamp, read_rng, max_sweeps=max_sweeps, return_info=True)
            errors = hamming(out, patterns)  # [nb, n]
            batch_errors.append(errors.mean(-1))
            sweeps_all.append(info["sweeps"].ravel())
            capped += info["num_capped"]
        batch_errors = np.concatenate(batch_errors)
        sweeps_all = np.concatenate(sweeps_all)
        results[n] = {
            "mean": float(batch_errors.mean()),  # equal batch sizes: = mean over patterns
            "p5": float(np.percentile(batch_errors, 5)),
            "p95": float(np.percentile(batch_errors, 95)),
            "std_batch_mean": float(batch_errors.std(ddof=1)) if num_batches > 1 else 0.0,
            "num_batches": int(num_batches),
            "num_patterns": int(num_batches * n),
            "memory_size": net.memory_size,
            "mean_sweeps": float(sweeps_all.mean()),
            "max_sweeps_used": int(sweeps_all.max()),
            "num_capped": int(capped),
            "max_sweeps": int(max_sweeps),
        }
    return results


def format_table(all_results: dict, num_patterns_list) -> str:
    """Markdown table: ours (mean [p5, p95]) next to the paper's row for every rule."""
    header = "| Method | " + " | ".join(str(n) for n in num_patterns_list) + " |"
    lines = [header, "|" + "---|" * (len(num_patterns_list) + 1)]
    groups = {}  # paper row -> our rules that are variants of it, in the given order
    for rule in all_results:
        groups.setdefault(PAPER_KEY[rule], []).append(rule)
    for key, rules in groups.items():
        for rule in rules:
            res = all_results[rule]
            cells = [f"{res[n]['mean']:.2f} [{res[n]['p5']:.2f}, {res[n]['p95']:.2f}]" for n in num_patterns_list]
            lines.append(f"| ours: {rule} | " + " | ".join(cells) + " |")
        row = dict(zip(TABLE1_NUM_PATTERNS, PAPER_TABLE1[key]))
        cells = [str(row[n]) if n in row else "-" for n in num_patterns_list]
        lines.append(f"| paper: {PAPER_ROW_NAMES[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ebmm_tf.baselines.hopfield",
        description="Hopfield network baselines under the paper's Table 1 protocol (binary strings).",
    )
    parser.add_argument("--rules", default="hebb,storkey,pinv", help=f"comma list from {RULES}")
    parser.add_argument("--num_patterns", default=",".join(map(str, TABLE1_NUM_PATTERNS)))
    parser.add_argument("--min_patterns", type=int, default=1000)
    parser.add_argument("--min_batches", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_sweeps", type=int, default=100)
    parser.add_argument("--output", default=None, help="write the results as JSON to this path")
    args = parser.parse_args(argv)

    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    for r in rules:
        if r not in RULES:
            parser.error(f"unknown rule {r!r}; expected one of {RULES}")
    num_patterns_list = [int(v) for v in args.num_patterns.split(",") if v.strip()]

    all_results = {}
    timings = {}
    for rule in rules:
        t0 = time.perf_counter()
        all_results[rule] = evaluate_table1(
            rule,
            num_patterns_list,
            min_patterns=args.min_patterns,
            seed=args.seed,
            min_batches=args.min_batches,
            max_sweeps=args.max_sweeps,
        )
        timings[rule] = time.perf_counter() - t0

    print(format_table(all_results, num_patterns_list))
    print()
    for rule in rules:
        res = all_results[rule]
        capped = sum(r["num_capped"] for r in res.values())
        worst = max(r["max_sweeps_used"] for r in res.values())
        print(
            f"{rule}: {timings[rule]:.1f} s; memory {res[num_patterns_list[0]]['memory_size']} floats; "
            "batches per N "
            + ", ".join(f"{n}:{res[n]['num_batches']}" for n in num_patterns_list)
            + f"; max sweeps used {worst} (cap {args.max_sweeps}, hit by {capped} queries)"
        )
    if args.output:
        payload = {
            "config": {
                "rules": rules,
                "num_patterns": num_patterns_list,
                "min_patterns": args.min_patterns,
                "min_batches": args.min_batches,
                "seed": args.seed,
                "max_sweeps": args.max_sweeps,
                "dim": DIM,
                "num_kept": NUM_KEPT,
                "tie_rule": f"keep current state if |field| <= {TIE_TOL}",
                "bias": "zero threshold vector for every rule",
            },
            "results": {rule: {str(n): r for n, r in res.items()} for rule, res in all_results.items()},
            "paper": {rule: list(PAPER_TABLE1[PAPER_KEY[rule]]) for rule in rules},
            "seconds": timings,
        }
        with open(args.output, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    from ebmm_tf.cli import guarded

    sys.exit(guarded(main, "python -m ebmm_tf.baselines.hopfield")())
