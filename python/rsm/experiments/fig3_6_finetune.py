"""Figs. 3-6: each baseline against its RSM redesign on the 2D toy (THEORY.md §9, §14).

Every method fine-tunes the same pretrained reference toward r(x) = -|x - (2, 0)|^2 / 2 under the
same network-evaluation budget (per panel), several seeds. At fixed NFE checkpoints the policy is
evaluated with its deterministic sampler: mean reward, the exact KL to the data and to the
reward-tilted target p* (change of variables through the sampler; _finetune_toy), and the energy
distance to p*. Also recorded: wall-clock seconds of training (rollout + update, evaluation
excluded), reward calls, and per-timestep clip fractions (Fig. 3c).

Panels (the presets as they now stand; docs/RELEASED.md for the released configurations)
  zo-branch  TempFlow-GRPO vs rsm-zo (timestep-fair matching hinge, fairclip2) with its preset's
             budget ("tapered" since issue 17) and the other profiles of THEORY.md §9.2.4 (base, highsnr,
             highsnr2, lowsnr, lowsnr2 = the paper's) as extra rows
  zo-sde     Flow-GRPO, DanceGRPO, Branch-GRPO, MixGRPO (as released), GRPO-Guard, PCPO (the
             papers) vs rsm-zo; the earlier forms flow-grpo-exact and branch-grpo-rsm as rows
  fo         VGG-Flow, Adjoint Matching, ReFL (as released), the earlier forms vgg-flow-rsm,
             adjoint-matching-rsm, draft-rsm vs rsm-fo (terminal estimator); the Fig. 6 estimator
             ablation (Tweedie vs terminal estimator at fixed temporal weighting) is the rows
             "... + terminal g" (on vgg-flow-rsm and vgg-flow) / "rsm-fo + Tweedie g"
  vp         DDPO (as released), PCPO-diffusion vs rsm-zo-diffusion; Residual nabla-DB, SQDF,
             DRaFT (as released; DRaFT's release is on SD1.5's DDPM), residual-ndb-rsm, sqdf-rsm
             vs rsm-fo-diffusion
Every checkpoint also records kl_path, the whole-path KL to the reference on one protocol per
path kind (_finetune_toy.path_kl), so the reward-KL trade-off is comparable between methods.
The full mode loops over seeds outermost and writes partial.json / partial.md after each seed.

Compute ratio (the paper's "up to 5x"): baseline final mean reward R_b reached at NFE N_b; the
redesign's mean curve first reaches R_b at N_r (linear interpolation between checkpoints);
ratio = N_b / N_r (> 1: the redesign needs less compute). The same with wall-clock seconds.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np

import rsm
from rsm import methods as _methods

from . import _finetune_toy as toy_lib

NAME = "fig3-6-finetune"
TITLE = "Figs. 3-6: baselines vs RSM redesigns on the 2D toy (reward vs NFE / time / KL, distance to p*)"

# Shared hyper-parameters of a family (so that a pair differs only in what defines the method).
# Zeroth order: 2 optimizer updates per rollout as in the paper's code (THEORY.md §9.2.6), so the
# trust region (clip threshold) acts; first order: lambda = 2 / alpha for the terminal estimator
# with eta = 1 - t, and twice that for eta = (1 - t)^2 (the paper's 3e7 vs 1.5e7, §9.4).
ZO = {"lr": 1e-3, "inner_epochs": 2}
FO = {"lr": 1e-3}
LAMBDA_FO = 2.0 / toy_lib.ALPHA

# The baselines are the presets as they now stand: the released-configuration presets (their
# authors' training scripts, docs/RELEASED.md) with the family's shared lr / inner epochs above,
# and the presets whose code could not be read (tempflow-grpo, grpo-guard, pcpo*: "paper").
# The earlier forms the paper's comparisons and the first runs of this study were built on
# (flow-grpo-exact, branch-grpo-rsm, vgg-flow-rsm, residual-ndb-rsm, sqdf-rsm,
# adjoint-matching-rsm, draft-rsm) are extra rows under their preset names, form "earlier".
# rsm-zo runs with its preset's budget (whatever rsm.methods.get("rsm-zo") says when the study
# runs; recorded in summary["methods"]["rsm-zo"]["budget"]), the other profiles as extra rows.
_ZO_PROFILES = ["lowsnr2", "tapered", "base", "highsnr", "highsnr2", "lowsnr"]
_FORM = {"flow-grpo": "released", "dance-grpo": "released", "ddpo": "released",
         "branch-grpo": "released", "mixgrpo": "released", "vgg-flow": "released",
         "residual-ndb": "released", "sqdf": "released", "adjoint-matching": "released",
         "draft": "released", "refl": "released",
         "tempflow-grpo": "paper", "grpo-guard": "paper", "pcpo": "paper", "pcpo-diffusion": "paper",
         "flow-grpo-exact": "earlier", "branch-grpo-rsm": "earlier", "vgg-flow-rsm": "earlier",
         "residual-ndb-rsm": "earlier", "sqdf-rsm": "earlier", "adjoint-matching-rsm": "earlier",
         "draft-rsm": "earlier"}
ZO_SDE = ("flow-grpo", "dance-grpo", "grpo-guard", "pcpo", "branch-grpo", "mixgrpo",
          "flow-grpo-exact", "branch-grpo-rsm")
FO_FLOW = ("vgg-flow", "vgg-flow-rsm", "adjoint-matching", "adjoint-matching-rsm", "draft-rsm", "refl")
FO_VP = ("residual-ndb", "residual-ndb-rsm", "sqdf", "sqdf-rsm", "draft")
ZO_VP = ("ddpo", "pcpo-diffusion")
QUICK = {"tempflow-grpo", "rsm-zo", "rsm-zo [highsnr]", "flow-grpo", "flow-grpo-exact", "rsm-fo",
         "vgg-flow", "vgg-flow-rsm", "vgg-flow-rsm + terminal g"}


def configs(quick: bool) -> list[dict[str, Any]]:
    """Every run of the study (quick mode: the QUICK labels); presets not in rsm.methods are
    skipped. Each config: label, preset, overrides, panels, baseline?, form, path kind, and the
    baselines it is the redesign of (compute ratios)."""
    known = set(_methods.names())
    out: list[dict[str, Any]] = []
    only = _panel_filter()

    def add(label: str, method: str, overrides: dict, panels: tuple[str, ...], baseline: bool,
            redesign_of: tuple[str, ...] = (), form: str | None = None) -> None:
        if method not in known or (quick and label not in QUICK):
            return
        if only is not None and not set(panels) & only:
            return
        preset = _methods.get(method)
        kept = {k: v for k, v in overrides.items() if k in preset}
        out.append({"label": label, "method": method, "overrides": kept, "panels": panels,
                    "baseline": baseline, "kind": _kind(method), "redesign_of": redesign_of,
                    "form": form or _FORM.get(method, "redesign")})

    zo_base = ("tempflow-grpo",) + ZO_SDE
    add("tempflow-grpo", "tempflow-grpo", ZO, ("zo-branch",), True)
    default = list(_methods.get("rsm-zo")["budget"]) if "rsm-zo" in known else None
    add("rsm-zo", "rsm-zo", ZO, ("zo-branch", "zo-sde"), False, zo_base)
    for profile in _ZO_PROFILES:
        if profile not in _methods.BUDGETS or list(_methods.BUDGETS[profile]) == default:
            continue   # a profile this rsm lacks, or the preset's own row above
        add(f"rsm-zo [{profile}]", "rsm-zo", {**ZO, "budget": profile},
            ("zo-branch", "zo-sde") if profile == "highsnr" else ("zo-branch",), False, zo_base,
            "redesign (budget profile)")
    for m in ZO_SDE:
        add(m, m, ZO, ("zo-sde",), True)
    # first order, flow path: lambda = 2 / alpha for eta = 1 - t (rsm-fo), twice that for
    # VGG-Flow's eta = (1 - t)^2 (the paper's 1:2 ratio); the others at their presets' lambda
    add("rsm-fo", "rsm-fo", {**FO, "reward_scale": LAMBDA_FO}, ("fo",), False, FO_FLOW)
    for m in FO_FLOW:
        add(m, m, {**FO, "reward_scale": 2 * LAMBDA_FO} if m.startswith("vgg-flow") else FO,
            ("fo",), True)
    # Fig. 6: the estimator alone (same temporal weighting, Tweedie vs terminal reward gradient),
    # on the earlier VGG-Flow form the paper's comparison used and on the released one
    for m in ("vgg-flow-rsm", "vgg-flow"):
        add(f"{m} + terminal g", m, {**FO, "reward_scale": 2 * LAMBDA_FO, "estimator": "fo-terminal"},
            ("fo",), False, (m,), "ablation (Fig. 6)")
    add("rsm-fo + Tweedie g", "rsm-fo", {**FO, "reward_scale": LAMBDA_FO, "estimator": "fo-tweedie"},
        ("fo",), True, (), "ablation (Fig. 6)")
    # the VP (diffusion) panel: zeroth and first order on the linear-VP reference
    for m in ZO_VP:
        add(m, m, ZO, ("vp",), True)
    for m in FO_VP:
        add(m, m, FO, ("vp",), True)
    add("rsm-zo-diffusion", "rsm-zo-diffusion", ZO, ("vp",), False, ZO_VP)
    add("rsm-fo-diffusion", "rsm-fo-diffusion", {**FO, "reward_scale": LAMBDA_FO}, ("vp",), False, FO_VP)
    return out


def _panel_filter() -> set[str] | None:
    """RSM_EXPERIMENT_PANELS="zo-branch,zo-sde" runs only the configs in those panels (a full run
    split over processes: the compute ratios never cross the groups zo-branch + zo-sde / fo / vp,
    so each group's process is complete on its own)."""
    value = os.environ.get("RSM_EXPERIMENT_PANELS", "")
    if not value:
        return None
    panels = {p.strip() for p in value.split(",") if p.strip()}
    unknown = panels - {"zo-branch", "zo-sde", "fo", "vp"}
    if unknown:
        raise ValueError(f"RSM_EXPERIMENT_PANELS: unknown panels {sorted(unknown)}; "
                         "known: zo-branch, zo-sde, fo, vp")
    return panels


def _kind(method: str) -> str:
    if method not in _methods.names():
        return "flow"
    return "vp" if _methods.get(method)["path"] == "vp" else "flow"


# kl_path above this is drawn as a gap (diverged runs); the tables keep the value
KL_PATH_SHOWN = 1e6


# NFE budget per panel (network evaluations of rollouts + training, as counted by the Trainer).
def _budgets(quick: bool) -> dict[str, float]:
    if quick:
        return {"zo-branch": 2.5e5, "zo-sde": 2.5e5, "fo": 2.5e5, "vp": 2.5e5}
    return {"zo-branch": 8e5, "zo-sde": 8e5, "fo": 8e5, "vp": 8e5}


def _run_one(toy: Any, cfg: dict, budget: float, n_evals: int, seed: int, geometry: dict) -> dict:
    """Fine-tune one config for `budget` NFE; evaluate at n_evals + 1 evenly spaced NFE marks."""
    kind = cfg["kind"]
    ref = toy.refs[kind]
    policy = ref.copy()
    # kl_every=0: the curves carry the exact KLs of the sampler's density (kl_data, kl_target)
    # and kl_path on one protocol for every method (_finetune_toy.path_kl), where the history's
    # own kl_path would use each preset's grid and noise level
    trainer = rsm.Trainer(policy, ref, toy.reward, cfg["method"], path=toy.paths[kind], seed=seed,
                          kl_every=0, **geometry, **cfg["overrides"])
    marks = [budget * k / n_evals for k in range(n_evals + 1)]
    curve = []
    nfe = seconds = calls = 0.0
    clip_rows = []

    def record() -> None:
        ev = toy_lib.evaluate(toy, policy, kind)
        curve.append({"nfe": nfe, "seconds": seconds, "reward_calls": calls,
                      "steps": trainer.iteration, **ev})

    record()
    next_mark = 1
    diverged = False
    while next_mark <= n_evals:
        try:
            row = trainer.step()
        except FloatingPointError:
            diverged = True
            break
        nfe += row["nfe"]
        seconds += row["seconds"]
        calls += row["reward_calls"]
        if row.get("clip_fraction_per_step"):
            clip_rows.append(row["clip_fraction_per_step"])
        while next_mark <= n_evals and nfe >= marks[next_mark]:
            record()
            next_mark += 1
    # per-step clip fractions are averaged only where every iteration trains the same steps (not
    # so for per-sample subsets such as sqdf's one step per sample: no per-step curve then)
    same = clip_rows and len({len(c) for c in clip_rows}) == 1
    clip = np.mean(np.asarray(clip_rows), axis=0).tolist() if same else []
    return {"curve": curve, "clip_per_step": clip, "diverged": diverged,
            "trained_steps": _trained_steps(trainer),
            "budget": list(trainer.cfg["budget"]) if "budget" in trainer.cfg else None}


def _mean_clip(runs: list[dict]) -> list[float]:
    """The per-step clip fraction averaged over the seeds that have one ([] if none do)."""
    rows = [r["clip_per_step"] for r in runs if r["clip_per_step"]]
    return np.mean(rows, axis=0).tolist() if rows else []


def _trained_steps(trainer: Any) -> list[int]:
    cfg = trainer.cfg
    if cfg["rollout"] == "branch":
        return [i for i, k in enumerate(cfg["budget"]) if k > 0]
    return []


def _geometry(cfg: dict, quick: bool) -> dict:
    """Batch per iteration: 16 prompts (roots) x 8 samples (4 x 8 in quick mode); a Branch-GRPO
    tree has its leaves per root (branch ** split: 16 as released, 8 in rsm's earlier form)."""
    preset = _methods.get(cfg["method"])
    group = preset["branch"] ** preset["split"] if preset["rollout"] == "tree" else 8
    return {"batch_size": 8 if quick else 16, "group_size": group}


# ------------------------------------------------------------------------------- aggregation
def _mean_curve(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x = mean compute axis, mean, std) of `key` over seeds, per checkpoint."""
    length = min(len(r["curve"]) for r in runs)
    x = np.array([[r["curve"][k]["nfe"] for k in range(length)] for r in runs]).mean(0)
    y = np.array([[r["curve"][k][key] for k in range(length)] for r in runs])
    return x, y.mean(0), y.std(0)


def _first_reach(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The smallest x at which the piecewise-linear curve (x, y) reaches `level` (nan if never)."""
    if y[0] >= level:
        return float(x[0])
    for k in range(1, len(y)):
        if y[k] >= level:
            frac = (level - y[k - 1]) / (y[k] - y[k - 1])
            return float(x[k - 1] + frac * (x[k] - x[k - 1]))
    return float("nan")


def _axis(runs: list[dict], key: str) -> np.ndarray:
    length = min(len(r["curve"]) for r in runs)
    return np.array([[r["curve"][k][key] for k in range(length)] for r in runs]).mean(0)


def compute_ratio(base_runs: list[dict], new_runs: list[dict], axis: str = "nfe") -> dict:
    """Compute (NFE or seconds) at which the redesign reaches the baseline's final mean reward."""
    bx, by = _axis(base_runs, axis), _axis(base_runs, "reward")
    nx, ny = _axis(new_runs, axis), _axis(new_runs, "reward")
    level = float(by[-1])
    reach = _first_reach(nx, ny, level)
    ratio = float(bx[-1] / reach) if reach == reach and reach > 0 else float("nan")
    return {"baseline_final_reward": level, "baseline_compute": float(bx[-1]),
            "redesign_reach": reach, "ratio": ratio,
            "redesign_final_reward": float(ny[-1])}


def _summarize(results: dict[str, list[dict]], cfgs: list[dict]) -> dict:
    rows = {}
    for cfg in cfgs:
        runs = results[cfg["label"]]
        final = {k: np.array([r["curve"][-1][k] for r in runs])
                 for k in ("reward", "kl_path", "kl_data", "kl_target", "ed_target", "nfe", "seconds",
                           "reward_calls")}
        start = runs[0]["curve"][0]
        rows[cfg["label"]] = {
            "method": cfg["method"], "panels": list(cfg["panels"]), "baseline": cfg["baseline"],
            "form": cfg["form"], "overrides": cfg["overrides"], "budget": runs[0]["budget"],
            **{f"{k}_mean": float(v.mean()) for k, v in final.items()},
            **{f"{k}_std": float(v.std()) for k, v in final.items()
               if k in ("reward", "kl_path", "kl_data", "kl_target", "ed_target")},
            "reward_start": start["reward"], "kl_target_start": start["kl_target"],
            "kl_path_start": start["kl_path"],
            "best_kl_target_mean": float(np.min(_mean_curve(runs, "kl_target")[1])),
            "diverged_seeds": int(sum(r["diverged"] for r in runs)),
            "clip_per_step": _mean_clip(runs),
        }
    ratios = []
    labels = {c["label"]: c for c in cfgs}
    for cfg in cfgs:
        for base in cfg["redesign_of"]:
            if base not in labels:
                continue
            shared = set(labels[base]["panels"]) & set(cfg["panels"])
            if not shared:
                continue
            entry = {"redesign": cfg["label"], "baseline": base}
            for axis in ("nfe", "seconds"):
                r = compute_ratio(results[base], results[cfg["label"]], axis)
                entry.update({f"{axis}_{k}": v for k, v in r.items()})
            ratios.append(entry)
    return {"methods": rows, "ratios": ratios}


# ------------------------------------------------------------------------------------ output
_COLORS = {}


def _color(label: str, k: int) -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"] if hasattr(matplotlib, "colormaps") else matplotlib.cm.get_cmap("tab10")
    return _COLORS.setdefault(label, cmap(k % 10))


def _plots(out: pathlib.Path, results: dict, cfgs: list[dict], target: dict) -> list[str]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return []
    panels = sorted({p for c in cfgs for p in c["panels"]}, key=["zo-branch", "zo-sde", "fo", "vp"].index)
    titles = {"zo-branch": "TempFlow-GRPO vs rsm-zo (budget profiles)",
              "zo-sde": "SDE baselines vs rsm-zo", "fo": "first order vs rsm-fo", "vp": "diffusion (VP)"}
    written = []
    specs = [("reward_vs_nfe", "nfe", "reward", "network evaluations", "mean reward"),
             ("reward_vs_time", "seconds", "reward", "training seconds", "mean reward"),
             ("reward_vs_kl", "kl_data", "reward", "KL(p_theta || p_data) (exact)", "mean reward"),
             ("reward_vs_kl_path", "kl_path", "reward", "path KL(P_theta || P_ref) (kl_path)", "mean reward"),
             ("kl_target_vs_nfe", "nfe", "kl_target", "network evaluations", "KL(p_theta || p*) (exact)")]
    for stem, xkey, ykey, xlabel, ylabel in specs:
        fig = Figure(figsize=(4.2 * len(panels), 3.3), dpi=90)
        FigureCanvasAgg(fig)
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), j + 1)
            members = [c for c in cfgs if panel in c["panels"]]
            for k, cfg in enumerate(members):
                runs = results[cfg["label"]]
                x = _axis(runs, xkey)
                _, y, s = _mean_curve(runs, ykey)
                if xkey == "kl_path":   # a diverging run's path KL (1e29) would flatten the axis
                    x = np.where(x < KL_PATH_SHOWN, x, np.nan)
                style = "--" if cfg["baseline"] else "-"
                col = _color(cfg["label"], len(_COLORS))
                ax.plot(x, y, style, color=col, label=cfg["label"], lw=1.4)
                if len(runs) > 1:
                    ax.fill_between(x, y - s, y + s, color=col, alpha=0.15, lw=0)
            if ykey == "reward":
                ax.axhline(target["reward"], color="k", lw=0.8, ls=":", label="exact p*")
            if xkey == "kl_data":
                ax.axvline(target["kl_data"], color="k", lw=0.8, ls=":")
            if xkey == "kl_path":   # 0 at the reference, 1-500 after training: symmetric log
                ax.set_xscale("symlog", linthresh=1.0)
                ax.set_xlim(left=0.0)
            if ykey == "kl_target":
                ax.set_yscale("log")
            ax.set_title(titles[panel], fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            if xkey == "nfe":
                ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
            ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, format="png")
        written.append(str(path))
    # Fig. 3c: clip fraction per trained transition, TempFlow vs rsm-zo profiles
    members = [c for c in cfgs if "zo-branch" in c["panels"]]
    if members:
        fig = Figure(figsize=(5.0, 3.2), dpi=90)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for cfg in members:
            clip = _mean_clip(results[cfg["label"]])
            if not clip:
                continue
            steps = results[cfg["label"]][0]["trained_steps"]
            ax.plot(steps, clip, "o--" if cfg["baseline"] else "o-", label=cfg["label"],
                    color=_color(cfg["label"], len(_COLORS)), ms=3)
        ax.set_xlabel("transition i (0 = noisiest, 8 = 't9')", fontsize=8)
        ax.set_ylabel("clip fraction (2nd inner epoch avg)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = out / "clip_fraction.png"
        fig.savefig(path, format="png")
        written.append(str(path))
    return written


def _write_tables(out: pathlib.Path, results: dict, summary: dict, target: dict,
                  stem: str = "summary") -> None:
    with open(out / ("curves.csv" if stem == "summary" else f"{stem}_curves.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        keys = ["nfe", "seconds", "reward_calls", "steps", "reward", "kl_path", "kl_data", "kl_target",
                "ed_target", "finite"]
        writer.writerow(["label", "seed"] + keys)
        for label, runs in results.items():
            for s, run in enumerate(runs):
                for point in run["curve"]:
                    writer.writerow([label, s] + [f"{point[k]:.6g}" for k in keys])
    lines = ["| method | form | panels | reward | kl_path | KL(p‖p_data) | KL(p‖p*) | energy dist. to p* | NFE "
             "| train s | reward calls |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in summary["methods"].items():
        lines.append(f"| {label}{' (baseline)' if m['baseline'] else ''} | {m['form']} | {', '.join(m['panels'])} | "
                     f"{m['reward_mean']:.3f} ± {m['reward_std']:.3f} | {m['kl_path_mean']:.3g} ± {m['kl_path_std']:.2g} | "
                     f"{m['kl_data_mean']:.2f} ± {m['kl_data_std']:.2f} | "
                     f"{m['kl_target_mean']:.3f} ± {m['kl_target_std']:.3f} | {m['ed_target_mean']:.3f} ± {m['ed_target_std']:.3f} | "
                     f"{m['nfe_mean']:.3g} | {m['seconds_mean']:.1f} | {m['reward_calls_mean']:.0f} |")
    lines.append(f"| exact p* | | | {target['reward']:.3f} | | {target['kl_data']:.2f} | 0 | 0 | | | |")
    lines += ["", "| redesign | baseline | baseline final reward | NFE ratio | seconds ratio |", "|---|---|---|---|---|"]
    for r in summary["ratios"]:
        lines.append(f"| {r['redesign']} | {r['baseline']} | {r['nfe_baseline_final_reward']:.3f} | "
                     f"{_fmt_ratio(r['nfe_ratio'])} | {_fmt_ratio(r['seconds_ratio'])} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def _fmt_ratio(v: float) -> str:
    return "not reached" if not math.isfinite(v) else f"{v:.2f}x"


def run(out: pathlib.Path, quick: bool = False, seed: int = 0) -> dict:
    # The 2D toy's batches are tiny: one thread is fastest, and on a loaded machine OpenMP
    # threads that wait for busy cores made a VJP 30-60x slower (measured). Restored after.
    threads = rsm.build_info().get("num_threads", 1)
    rsm.set_num_threads(1)
    try:
        return _run(out, quick, seed)
    finally:
        rsm.set_num_threads(max(1, int(threads)))


def _run(out: pathlib.Path, quick: bool, seed: int) -> dict:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    cfgs = configs(quick)
    kinds = tuple(sorted({c["kind"] for c in cfgs}))
    toy = toy_lib.make_toy(quick, seed, kinds)
    budgets = _budgets(quick)
    seeds = [seed + k for k in range(1 if quick else toy_lib.full_seeds())]
    n_evals = 4 if quick else 8
    target = toy_lib.exact_reference_numbers(toy)
    results: dict[str, list[dict]] = {c["label"]: [] for c in cfgs}
    # seeds outermost: after each complete pass over the configs, partial.json / partial.md hold
    # every method over the seeds done so far (a run stopped by a deadline leaves k full seeds)
    for s in seeds:
        for cfg in cfgs:
            budget = max(budgets[p] for p in cfg["panels"])
            t0 = time.perf_counter()
            results[cfg["label"]].append(_run_one(toy, cfg, budget, n_evals, s, _geometry(cfg, quick)))
            if not quick:
                print(f"[{NAME}] seed {s} {cfg['label']}: {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr, flush=True)
        if not quick and s != seeds[-1]:
            partial = _summarize(results, cfgs)
            partial.update({"target": target, "seeds": seeds[:seeds.index(s) + 1], "budgets": budgets,
                            "wall_seconds": time.perf_counter() - start,
                            "cpu_seconds": time.process_time() - cpu_start})
            _write_tables(out, results, partial, target, stem="partial")
            (out / "partial.json").write_text(json.dumps(partial, indent=1, default=float))
    summary = _summarize(results, cfgs)
    summary.update({"target": target, "seeds": seeds, "budgets": budgets,
                    "kl_path_protocol": {k: toy_lib.KL_PATH[k] for k in kinds},
                    "reference": {k: toy_lib.evaluate(toy, m, k) for k, m in toy.refs.items()},
                    "wall_seconds": time.perf_counter() - start,
                    "cpu_seconds": time.process_time() - cpu_start,
                    "figures": _plots(out, results, cfgs, target)})
    _write_tables(out, results, summary, target)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
