"""Fig. 2 of the paper, estimator quality: RMSE of value-guidance estimators Psi_hat against the
exact Psi on the paper's toy (THEORY.md §8): the 3-Gaussian triangle, linear reward
r(x) = -x_1/2 + 3, alpha = 1, Psi = grad log p*_t - grad log p_t in closed form (§12.4).

Two paths: the paper's DDPM (VP, T = 500, beta linear 1e-4..0.03, stride-10 DDPM sampler) and the
flow path (x_t = (1-t) x0 + t eps, Flow-GRPO's SDE with a = sqrt 2, the time reversal, so that the
exact Psi is what the stochastic estimators target, THEORY.md §3.2). Two noise levels each: low SNR
(VP index 389, abar = 0.0098 as in the paper; flow t = 0.9) and high SNR (VP index 100,
abar = 0.73; flow t = 0.4). Two models: the exact mixture denoiser (no network error) and an MLP
pretrained here with rsm.pretrain (the paper's setting; cached in the output folder).

Estimators (rsm.estimators): zeroth order without / with control variate (and with exponential
weights, the consistent one), stochasticity localisation, partial rollouts t_j/t_i in
{0.9, 0.8, 0.5} (zeroth and first order), Branch-GRPO trees (#split, #branch), and the
deterministic first-order ones: Tweedie (DPS, and with the Jacobian dropped), k-step ODE
lookahead, the terminal gradient.

Error decomposition: every sample size N is run on B = max(1, budget / N) independent blocks per
point; RMSE = sqrt(mean over points, blocks, coordinates of (Psi_hat - Psi)^2) (root mean square,
so that RMSE^2 = bias^2 + std^2 exactly; the paper averages per-point RMSEs instead), bias^2 the
squared error of the block mean minus its sampling part (std^2 / (B - 1)), std^2 the within-point
variance over blocks. With B < 4 (the largest N) they are too noisy to separate and are NaN.
"""
from __future__ import annotations

import csv
import math
import pathlib
import time
from typing import Any, Callable

import numpy as np

NAME = "fig2-estimators"
TITLE = "Fig. 2: RMSE, bias and variance of value-guidance estimators vs the exact Psi (toy)"

REWARD_GRAD = (-0.5, 0.0)
REWARD_BIAS = 3.0
VP_T = 500
FLOW_NOISE = math.sqrt(2.0)          # Flow-GRPO a = sqrt 2: the time-reversal SDE (memoryless)
FLOW_DT = 0.025
RATIOS = (0.9, 0.8, 0.5)
BRANCHES = ((1, 1), (2, 2), (3, 2), (4, 2), (2, 4))
ODE_STEPS = (2, 4, 8)

# log2 N values (the zeroth-order baselines in LONG also get `long`), block budget M, points
FULL = {"exact": {"sizes": (4, 6, 8, 10, 12, 14), "long": (16,), "budget": 2 ** 10, "points": 8},
        "mlp": {"sizes": (4, 6, 8, 10, 12), "long": (), "budget": 2 ** 10, "points": 6}}
QUICK = {"exact": {"sizes": (4, 6, 8), "long": (), "budget": 2 ** 9, "points": 6},
         "mlp": {"sizes": (4, 6), "long": (), "budget": 2 ** 6, "points": 3}}
LONG = ("zo", "zo-cv", "zo-exp")
MIN_BLOCKS = 4                       # fewer blocks per point: bias and std are reported as NaN
MLP_CONFIG = {"hidden": 64, "depth": 3}
MLP_TRAIN = {"full": {"steps": 2000, "batch_size": 512, "lr": 2e-3},
             "quick": {"steps": 30, "batch_size": 128, "lr": 2e-3}}


def reward():
    import rsm

    return rsm.rewards.linear(REWARD_GRAD, REWARD_BIAS)


def setting(kind: str) -> dict[str, Any]:
    """The path and the two evaluation grids (low and high SNR) of one path kind."""
    import rsm

    if kind == "vp":
        path = rsm.VPPath("ddpm_linear", beta_start=1e-4, beta_end=0.03, num_train_steps=VP_T)
        grids = {snr: np.concatenate([np.arange(idx, 0, -10) / VP_T, [0.0]])
                 for snr, idx in (("low", 389), ("high", 100))}
        return {"path": path, "grids": grids, "noise_level": 0.7}
    if kind == "flow":
        path = rsm.FlowPath()
        grids = {snr: np.linspace(t, 0.0, int(round(t / FLOW_DT)) + 1) for snr, t in (("low", 0.9), ("high", 0.4))}
        return {"path": path, "grids": grids, "noise_level": FLOW_NOISE}
    raise ValueError(f"fig2: unknown path kind {kind!r}")


def points(path: Any, t: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """States x_t = alpha x0 + sigma eps with x0 from the tilted target p* (as the paper's toy),
    and the exact Psi there (float64)."""
    import rsm
    from rsm import estimators

    tri = rsm.datasets.get("triangle")
    x0 = tri.tilted(REWARD_GRAD, 1.0).sample(n, seed=seed).astype(np.float64)
    c = path.coef(float(t))
    eps = np.random.default_rng(seed).standard_normal(x0.shape)
    x = c["alpha"] * x0 + c["sigma"] * eps
    return x, estimators.exact_value_gradient(tri, path, x, float(t), REWARD_GRAD)


def _end_index(ts: np.ndarray, ratio: float) -> int:
    """The grid index whose time is closest to ratio * ts[0] (at least one step)."""
    return max(1, int(np.argmin(np.abs(ts - ratio * ts[0]))))


def estimators_for(ts: np.ndarray, noise_level: float) -> list[dict[str, Any]]:
    """Specs: name, group, sampled (depends on N) or not, fn(model, path, x, N, seed), and the
    network evaluations (forward or VJP) per state per sample."""
    from rsm import estimators as E

    r = reward()
    S = len(ts) - 1
    specs: list[dict[str, Any]] = []

    def add(name: str, group: str, fn: Callable, nfe: float, sampled: bool = True) -> None:
        specs.append({"name": name, "group": group, "fn": fn, "nfe": nfe, "sampled": sampled})

    add("zo", "zeroth", lambda m, p, x, n, s: E.zeroth_order(m, p, r, x, ts, 0, n, control_variate=False,
                                                            noise_level=noise_level, seed=s), S)
    add("zo-cv", "zeroth", lambda m, p, x, n, s: E.zeroth_order(m, p, r, x, ts, 0, n, noise_level=noise_level,
                                                               seed=s), S)
    add("zo-exp", "zeroth", lambda m, p, x, n, s: E.zeroth_order(m, p, r, x, ts, 0, n, weighting="exponential",
                                                                noise_level=noise_level, seed=s), S)
    add("zo-localized", "branching", lambda m, p, x, n, s: E.zeroth_order(
        m, p, r, x, ts, 0, n, continuation="localized", noise_level=noise_level, seed=s), S)
    for ratio in RATIOS:
        end = _end_index(ts, ratio)
        add(f"zo-partial-{ratio}", "lookahead", lambda m, p, x, n, s, end=end: E.zeroth_order_partial(
            m, p, r, x, ts, 0, end, n, noise_level=noise_level, seed=s), end + 1)
        add(f"fo-partial-{ratio}", "lookahead", lambda m, p, x, n, s, end=end: E.first_order_partial(
            m, p, r, x, ts, 0, end, n, noise_level=noise_level, seed=s), 2 * (end + 1))
    for split, branch in BRANCHES:
        if (split, branch) == (1, 1):
            continue  # identical to zo-cv (same sampler, same noises): plotted as such
        add(f"branch-{split}x{branch}", "branching", lambda m, p, x, n, s, sb=(split, branch):
            E.zeroth_order_branching(m, p, r, x, ts, 0, n, sb[0], sb[1], noise_level=noise_level, seed=s),
            S * E.branching_cost(S, split, branch))
    t = float(ts[0])
    add("fo-tweedie", "first", lambda m, p, x, n, s: E.first_order_tweedie(m, p, r, x, t), 2, False)
    add("fo-tweedie-nojac", "first", lambda m, p, x, n, s: E.first_order_tweedie(m, p, r, x, t, jacobian=False),
        1, False)
    for k in ODE_STEPS:
        add(f"fo-ode-{k}", "first", lambda m, p, x, n, s, k=k: E.first_order_lookahead(m, p, r, x, t, k), 2 * k,
            False)
    add("fo-terminal", "first", lambda m, p, x, n, s: E.first_order_terminal(
        m, p, r, x, ts, 0, 16, noise_level=noise_level, seed=s), S, False)
    return specs


def measure(spec: dict[str, Any], model: Any, path: Any, x: np.ndarray, psi: np.ndarray,
            sizes: tuple[int, ...], budget: int, seed: int) -> list[dict[str, Any]]:
    """Rows {N, nfe, blocks, rmse, bias, std} of one estimator (see the module docstring)."""
    P, D = x.shape
    xm = x.astype(np.float32 if getattr(model, "dtype", "float64") == "float32" else np.float64)
    rows = []
    for j, log_n in enumerate(sizes if spec["sampled"] else (None,)):
        n = 2 ** log_n if log_n is not None else 1
        blocks = max(1, budget // n) if spec["sampled"] else 1
        est = np.asarray(spec["fn"](model, path, np.repeat(xm, blocks, axis=0), n, seed + 7919 * j),
                         dtype=np.float64).reshape(P, blocks, D)
        err = est - psi[:, None, :]
        mse = float((err ** 2).mean())
        if spec["sampled"] and blocks >= MIN_BLOCKS:
            var = est.var(1)                                                   # [P, D], ddof 0
            bias2 = float(((est.mean(1) - psi) ** 2 - var / (blocks - 1)).mean())
            std = float(math.sqrt(var.mean()))
            bias = math.sqrt(max(bias2, 0.0))
        elif spec["sampled"]:
            bias = std = float("nan")
        else:
            bias, std = math.sqrt(mse), 0.0
        rows.append({"N": n if spec["sampled"] else 0, "nfe": spec["nfe"] * n, "blocks": blocks,
                     "rmse": math.sqrt(mse), "bias": bias, "std": std})
    return rows


def pretrained_mlp(kind: str, path: Any, out: pathlib.Path, quick: bool, seed: int) -> Any:
    """An MLP denoiser pretrained on the triangle along `path` (rsm.pretrain), cached as
    out/mlp_<kind>.safetensors for the later runs in the same folder."""
    import rsm

    mode = "quick" if quick else "full"
    file = out / f"mlp_{kind}_{mode}_seed{seed}.safetensors"
    if file.exists():
        return rsm.load(str(file))
    model = rsm.MLP(2, dtype="float32", seed=seed, **MLP_CONFIG)
    data = rsm.datasets.get("triangle").sample(50_000, seed=seed + 1)
    rsm.pretrain(model, data, path, seed=seed, progress=False, lr_schedule="cosine", **MLP_TRAIN[mode])
    model.save(str(file))
    return model


def _plot(results: list[dict[str, Any]], model_name: str, file: pathlib.Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 6.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, squeeze=False)
    for r, kind in enumerate(("vp", "flow")):
        mine = [row for row in results if row["model"] == model_name and row["path"] == kind]

        def curve(ax, name, snr, x="N", **style):
            pts = [row for row in mine if row["estimator"] == name and row["snr"] == snr]
            if not pts:
                return
            if pts[0]["N"] == 0:  # deterministic: a horizontal line
                ax.axhline(pts[0]["rmse"], label=f"{name} ({snr})", lw=1.0, **style)
            else:
                ax.plot([math.log2(p[x]) for p in pts], [p["rmse"] for p in pts], marker="o", ms=3,
                        label=f"{name} ({snr})" if snr == "high" or x != "N" else name, **style)

        ax = axes[r][0]
        for k, name in enumerate(("zo", "zo-cv", "zo-exp", "fo-tweedie", "fo-tweedie-nojac",
                                  "fo-ode-2", "fo-ode-8", "fo-terminal")):
            curve(ax, name, "low", color=f"C{k}")
            curve(ax, name, "high", color=f"C{k}", ls="--")
        ax.set_title(f"{kind}: estimators (solid low SNR, dashed high)", fontsize=9)
        ax = axes[r][1]
        curve(ax, "zo-cv", "low", color="k")
        for k, ratio in enumerate(RATIOS):
            curve(ax, f"zo-partial-{ratio}", "low", color=f"C{k}")
            curve(ax, f"fo-partial-{ratio}", "low", color=f"C{k}", ls="--")
        curve(ax, "fo-tweedie", "low", color="k", ls=":")
        ax.set_title(f"{kind}: lookahead t_j/t_i, low SNR (dashed: first order)", fontsize=9)
        ax = axes[r][2]
        curve(ax, "zo-cv", "low", x="nfe", color="k")
        for k, (split, branch) in enumerate(BRANCHES[1:]):
            curve(ax, f"branch-{split}x{branch}", "low", x="nfe", color=f"C{k}")
        curve(ax, "zo-localized", "low", x="nfe", color="C5", ls="--")
        loc = [row for row in mine if row["estimator"] == "zo-localized" and row["snr"] == "low"
               and not math.isnan(row["std"])]
        if loc:
            ax.plot([math.log2(p["nfe"]) for p in loc], [p["std"] for p in loc], color="C5", ls=":",
                    marker="x", ms=3, label="zo-localized, std only")
        ax.set_title(f"{kind}: branching and localisation, low SNR", fontsize=9)
        for c, ax in enumerate(axes[r]):
            ax.set_yscale("log")
            ax.set_xlabel("log2 network evaluations per state" if c == 2 else "log2 N (samples)", fontsize=8)
            ax.set_ylabel("RMSE vs exact Psi", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=5.5, loc="best", ncol=2 if c == 0 else 1)
    fig.suptitle(f"Estimator RMSE on the triangle toy, model = {model_name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=90)


def _slope(rows: list[dict[str, Any]], key: str = "rmse") -> float:
    """Least-squares slope of log RMSE vs log N."""
    n = np.log([row["N"] for row in rows])
    y = np.log([row[key] for row in rows])
    return float(np.polyfit(n, y, 1)[0])


def run(out: pathlib.Path, quick: bool = False, seed: int = 0) -> dict:
    """Writes fig2_<model>.png, fig2_estimators.csv and fig2_estimators.md under `out`; returns
    {"rows": [...], "slopes": {...}, "seconds": ...}."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import rsm

    sizes_cfg = QUICK if quick else FULL
    tri = rsm.datasets.get("triangle")
    results: list[dict[str, Any]] = []
    start = time.time()
    for model_name in ("exact", "mlp"):
        cfg = sizes_cfg[model_name]
        for kind in ("vp", "flow"):
            st = setting(kind)
            path = st["path"]
            if model_name == "exact":
                model = rsm.GaussianMixtureModel.from_dataset(tri, path)
            else:
                model = pretrained_mlp(kind, path, out, quick, seed)
            for snr, ts in st["grids"].items():
                x, psi = points(path, ts[0], cfg["points"], seed + 42)
                specs = estimators_for(ts, st["noise_level"])
                if quick:  # the claims the tests assert, and one of each family for the MLP
                    keep = {"zo", "zo-cv", "fo-tweedie", "fo-ode-2", "fo-partial-0.8", "branch-2x2", "zo-localized"}
                    if model_name == "mlp":
                        keep = {"zo-cv", "fo-tweedie", "fo-partial-0.8"}
                    specs = [s for s in specs if s["name"] in keep]
                for k, spec in enumerate(specs):
                    sizes = cfg["sizes"] + (cfg["long"] if spec["name"] in LONG else ())
                    for row in measure(spec, model, path, x, psi, sizes, cfg["budget"], seed + 1000 * k):
                        results.append({"model": model_name, "path": kind, "snr": snr, "t": float(ts[0]),
                                        "estimator": spec["name"], "group": spec["group"], **row})
                results.append({"model": model_name, "path": kind, "snr": snr, "t": float(ts[0]),
                                "estimator": "psi-norm", "group": "reference", "N": 0, "nfe": 0, "blocks": 1,
                                "rmse": float(np.sqrt((psi ** 2).mean())), "bias": float("nan"),
                                "std": float("nan")})
        _plot(results, model_name, out / f"fig2_{model_name}.png")
    slopes, std_slopes, efficiency = {}, {}, {}
    for model_name in ("exact", "mlp"):
        for kind in ("vp", "flow"):
            for snr in ("low", "high"):
                def of(name):
                    return [r for r in results if (r["model"], r["path"], r["snr"], r["estimator"]) ==
                            (model_name, kind, snr, name)]
                key = f"{model_name}/{kind}/{snr}"
                for name in LONG:
                    if len(of(name)) >= 2:
                        slopes[f"{key}/{name}"] = _slope(of(name))
                reference = {r["N"]: r for r in of("zo-cv") if not math.isnan(r["std"])}
                for name in dict.fromkeys(r["estimator"] for r in results):
                    rows = [r for r in of(name) if r["N"] > 0 and not math.isnan(r["std"]) and r["std"] > 0]
                    if len(rows) >= 2:
                        std_slopes[f"{key}/{name}"] = _slope(rows, "std")
                    # variance x network evaluations relative to zo-cv at the same N (< 1: cheaper
                    # for the same variance; the equal-compute comparison of THEORY.md §8.4)
                    ratios = [r["std"] ** 2 * r["nfe"] / (reference[r["N"]]["std"] ** 2 * reference[r["N"]]["nfe"])
                              for r in rows if r["N"] in reference]
                    if ratios:
                        efficiency[f"{key}/{name}"] = float(np.exp(np.mean(np.log(ratios))))
    _write_csv(results, out / "fig2_estimators.csv")
    (out / "fig2_estimators.md").write_text(_markdown(results, slopes, std_slopes, efficiency))
    return {"rows": results, "slopes": slopes, "std_slopes": std_slopes, "efficiency": efficiency,
            "seconds": time.time() - start}


FIELDS = ("model", "path", "snr", "t", "estimator", "group", "N", "nfe", "blocks", "rmse", "bias", "std")


def _write_csv(results: list[dict[str, Any]], file: pathlib.Path) -> None:
    with open(file, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(FIELDS)
        for row in results:
            out.writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in FIELDS])


def _markdown(results: list[dict[str, Any]], slopes: dict[str, float], std_slopes: dict[str, float],
              efficiency: dict[str, float]) -> str:
    lines = []
    for model_name in ("exact", "mlp"):
        for kind in ("vp", "flow"):
            mine = [r for r in results if r["model"] == model_name and r["path"] == kind]
            if not mine:
                continue
            sizes = sorted({r["N"] for r in mine if r["N"] > 0})
            lines.append(f"\n### model = {model_name}, path = {kind}: RMSE (bias / std) vs N\n")
            lines.append("| SNR | estimator | " + " | ".join(f"N=2^{int(math.log2(n))}" for n in sizes) + " |")
            lines.append("|---|---|" + "---|" * len(sizes))
            for snr in ("low", "high"):
                names = list(dict.fromkeys(r["estimator"] for r in mine if r["snr"] == snr))
                for name in names:
                    rows = {r["N"]: r for r in mine if r["snr"] == snr and r["estimator"] == name}
                    if 0 in rows:
                        r = rows[0]
                        cell = f"{r['rmse']:.3f} (deterministic)" if name != "psi-norm" else f"|Psi| rms {r['rmse']:.3f}"
                        lines.append(f"| {snr} | {name} | {cell} |" + " |" * (len(sizes) - 1))
                        continue
                    cells = []
                    for n in sizes:
                        r = rows.get(n)
                        if r is None:
                            cells.append("")
                        elif math.isnan(r["bias"]):
                            cells.append(f"{r['rmse']:.3f}")
                        else:
                            cells.append(f"{r['rmse']:.3f} ({r['bias']:.3f}/{r['std']:.3f})")
                    lines.append(f"| {snr} | {name} | " + " | ".join(cells) + " |")
    lines.append("\n### log-log slope of RMSE vs N (zeroth order)\n")
    lines.append("| model/path/SNR/estimator | slope |")
    lines.append("|---|---|")
    for key, value in slopes.items():
        lines.append(f"| {key} | {value:.3f} |")
    lines.append("\n### std (sampling part only): log-log slope vs N, and variance x network evaluations "
                 "relative to zo-cv at equal N (geometric mean over N; < 1 = less variance per compute)\n")
    lines.append("| model/path/SNR/estimator | std slope | var x NFE / zo-cv |")
    lines.append("|---|---|---|")
    for key in dict.fromkeys(list(std_slopes) + list(efficiency)):
        slope = f"{std_slopes[key]:.3f}" if key in std_slopes else ""
        eff = f"{efficiency[key]:.2f}" if key in efficiency else ""
        lines.append(f"| {key} | {slope} | {eff} |")
    return "\n".join(lines) + "\n"
