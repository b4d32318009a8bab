"""Figs. 8-11: the auxiliary mechanisms the RSM redesigns prune (THEORY.md §10, §14), on the 2D toy.

  Fig. 8   |g_phi| (VGG-Flow's learned value-gradient refinement) and |h_phi| (Residual nabla-DB's
           learned residual) against the analytic reward-gradient term they refine, along
           generation; plus what the paper could not check: whether the learned g_phi is right,
           i.e. whether g + g_phi is closer than g alone to the exact value gradient of the
           deterministic flow, grad_x r(x0(x)) (the adjoint through the sampler, computed
           exactly with VJPs), after fitting g_phi on a fixed model.
  Fig. 9   pruned VGG-Flow vs VGG-Flow + g_phi: reward, exact KL to the data / to p*, seconds.
  Fig. 10  Residual nabla-DB form (rsm-fo-diffusion preset: forward residual, VP) without h_phi,
           with h_phi fitted by the forward loss, and with the backward loss added.
  Fig. 11  rsm-fo on-policy vs with an offline replay buffer of past rollouts.

Every variant runs the same number of iterations from the same reference and seeds; the
mechanisms live in rsm.auxiliary (AuxTrainer). The mechanisms attach to the forms the paper's
ablations were built on (g_phi needs every step trained: vgg-flow-rsm; h_phi needs the forward
residual estimator: rsm-fo-diffusion); the presets as released (vgg-flow, residual-ndb, sqdf,
docs/RELEASED.md) run beside them as labelled context rows, and SQDF as released (whose code has
a replay buffer the preset leaves out) beside sqdf-rsm with and without rsm's buffer. Every
checkpoint carries kl_path, the whole-path KL to the reference on one protocol for every method
(_finetune_toy.path_kl)."""
from __future__ import annotations

import csv
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np

import rsm
from rsm import auxiliary as aux

from . import _finetune_toy as toy_lib

NAME = "fig8-11-aux"
TITLE = "Figs. 8-11: learned value-gradient / residual networks, backward loss, replay buffer (ablations)"

LAMBDA = 2.0 / toy_lib.ALPHA


def variants() -> list[dict[str, Any]]:
    """(figure, label, preset, path kind, overrides, mechanism factory)."""
    return [
        {"fig": "9", "label": "vgg-flow-rsm (pruned)", "method": "vgg-flow-rsm", "kind": "flow",
         "overrides": {"reward_scale": 2 * LAMBDA}, "make": lambda s: {}},
        {"fig": "9", "label": "vgg-flow-rsm + g_phi", "method": "vgg-flow-rsm", "kind": "flow",
         "overrides": {"reward_scale": 2 * LAMBDA},
         "make": lambda s: {"value_net": aux.ValueGradientNet(2, seed=s + 11)}},
        {"fig": "9", "label": "vgg-flow (released, pruned)", "method": "vgg-flow", "kind": "flow",
         "overrides": {"reward_scale": 2 * LAMBDA}, "make": lambda s: {}, "full_only": True},
        {"fig": "10", "label": "residual (pruned)", "method": "rsm-fo-diffusion", "kind": "vp",
         "overrides": {"reward_scale": LAMBDA}, "make": lambda s: {}},
        {"fig": "10", "label": "residual + h_phi (forward loss)", "method": "rsm-fo-diffusion",
         "kind": "vp", "overrides": {"reward_scale": LAMBDA},
         "make": lambda s: {"residual": aux.ResidualNet(2, backward_loss=False, seed=s + 12)}},
        {"fig": "10", "label": "residual + h_phi + backward loss", "method": "rsm-fo-diffusion",
         "kind": "vp", "overrides": {"reward_scale": LAMBDA},
         "make": lambda s: {"residual": aux.ResidualNet(2, backward_loss=True, seed=s + 12)}},
        {"fig": "10", "label": "residual-ndb (released, pruned)", "method": "residual-ndb", "kind": "vp",
         "overrides": {}, "make": lambda s: {}, "full_only": True},
        {"fig": "10", "label": "residual-ndb-rsm (pruned)", "method": "residual-ndb-rsm", "kind": "vp",
         "overrides": {}, "make": lambda s: {}, "full_only": True},
        {"fig": "11", "label": "rsm-fo (on-policy)", "method": "rsm-fo", "kind": "flow",
         "overrides": {"reward_scale": LAMBDA}, "make": lambda s: {}},
        {"fig": "11", "label": "rsm-fo + replay buffer", "method": "rsm-fo", "kind": "flow",
         "overrides": {"reward_scale": LAMBDA},
         "make": lambda s: {"replay": aux.ReplayBuffer(capacity=8, replay=2, seed=s)}},
        # SQDF's release trains with a replay buffer the presets leave out; rsm's buffer needs
        # every step as a row (with sqdf's one step per sample the replayed rows do not match
        # the batch's: refused by the update), so the pair runs on the every-step form sqdf-rsm
        {"fig": "11", "label": "sqdf (released, on-policy)", "method": "sqdf", "kind": "vp",
         "overrides": {}, "make": lambda s: {}, "full_only": True},
        {"fig": "11", "label": "sqdf-rsm (on-policy)", "method": "sqdf-rsm", "kind": "vp",
         "overrides": {}, "make": lambda s: {}, "full_only": True},
        {"fig": "11", "label": "sqdf-rsm + replay buffer", "method": "sqdf-rsm", "kind": "vp",
         "overrides": {}, "make": lambda s: {"replay": aux.ReplayBuffer(capacity=8, replay=2, seed=s)},
         "full_only": True},
    ]


def _run_variant(toy: Any, v: dict, steps: int, n_evals: int, seed: int, batch: int) -> dict:
    ref = toy.refs[v["kind"]]
    policy = ref.copy()
    # kl_every=0: the curves carry the exact KLs of the sampler's density (see fig3_6_finetune)
    trainer = aux.AuxTrainer(policy, ref, toy.reward, v["method"], path=toy.paths[v["kind"]],
                             batch_size=batch, group_size=8, seed=seed, lr=1e-3, kl_every=0,
                             **v["overrides"], **v["make"](seed))
    marks = {round(steps * k / n_evals) for k in range(n_evals + 1)}
    curve, seconds, nfe = [], 0.0, 0
    for k in range(steps + 1):
        if k in marks:
            curve.append({"iteration": k, "seconds": seconds, "nfe": nfe,
                          **toy_lib.evaluate(toy, policy, v["kind"])})
        if k == steps:
            break
        row = trainer.step()
        seconds += row["seconds"]
        nfe += row["nfe"]
    # norms along generation, averaged over the last quarter of the iterations
    log = trainer.aux_log[-max(1, len(trainer.aux_log) // 4):]
    norms = {}
    if log and "g_phi_norm" in log[0]:
        norms = {"t": log[0]["t"], "learned": np.mean([r["g_phi_norm"] for r in log], 0).tolist(),
                 "analytic": np.mean([r["g_norm"] for r in log], 0).tolist()}
    elif log and "h_norm" in log[0]:
        order = np.argsort(log[0]["t"])[::-1]
        t = np.asarray(log[0]["t"])[order]
        norms = {"t": t.tolist(),
                 "learned": np.mean([np.asarray(r["h_norm"])[order] for r in log], 0).tolist(),
                 "analytic": np.mean([np.asarray(r["prior_norm"])[order] for r in log], 0).tolist()}
    return {"curve": curve, "norms": norms}


def pathwise_value_gradient(model: Any, path: Any, states: list[np.ndarray], ts: np.ndarray,
                            coefs: list[dict], g_terminal: np.ndarray) -> list[np.ndarray]:
    """grad_{x_i} r(x_0) through the deterministic sampler x' = A x + K u(x, t) from step i to
    the end (exact adjoint by VJPs): a_S = grad r(x0), a_i = A a_{i+1} + J_u^T (K a_{i+1})."""
    a = g_terminal.astype(np.float64)
    out: list[np.ndarray] = [None] * len(states)  # type: ignore[list-item]
    for i in range(len(states) - 1, -1, -1):
        dx, _ = model.vjp(np.ascontiguousarray(states[i], dtype=model.dtype), ts[i],
                          np.ascontiguousarray(coefs[i]["K"] * a, dtype=model.dtype))
        a = coefs[i]["A"] * a + np.from_dlpack(dx).astype(np.float64)
        out[i] = a
    return out


def g_phi_fidelity(toy: Any, updates: int, seed: int, batch: int) -> dict:
    """Fit g_phi by the consistency loss on rollouts of the fixed reference, then compare
    g (Tweedie) and g + g_phi with the exact pathwise value gradient on fresh rollouts."""
    ref, path = toy.refs["flow"], toy.paths["flow"]
    trainer = aux.AuxTrainer(ref.copy(), ref, toy.reward, "vgg-flow-rsm", path=path, batch_size=batch,
                             group_size=8, seed=seed, reward_scale=2 * LAMBDA,
                             value_net=aux.ValueGradientNet(2, seed=seed + 11, updates=1))
    losses = []
    for _ in range(updates):  # rollouts + g_phi updates only: the policy is not updated
        trainer.rollout()
        trainer.iteration += 1
        losses.append(trainer.aux_log[-1]["loss"])
    vn, ts = trainer.value_net, trainer.ts
    trainer.value_net = None  # a fresh rollout without applying g_phi
    batch_ = trainer.rollout()
    rows = sorted(batch_["rows"], key=lambda r: r["step"])
    states = [r["x"].astype(np.float64) for r in rows]
    exact = pathwise_value_gradient(ref, path, states, ts, trainer.det_coef, batch_["grad"])
    err_g, err_gphi, norm_exact, norm_g, norm_phi = [], [], [], [], []
    for r, a in zip(rows, exact):
        g = batch_["grad_rows"][r["index"]].astype(np.float64)
        phi = vn(r["x"], ts[r["step"]])
        scale = np.linalg.norm(a, axis=1).mean()
        err_g.append(float(np.linalg.norm(g - a, axis=1).mean() / scale))
        err_gphi.append(float(np.linalg.norm(g + phi - a, axis=1).mean() / scale))
        norm_exact.append(float(scale))
        norm_g.append(float(np.linalg.norm(g, axis=1).mean()))
        norm_phi.append(float(np.linalg.norm(phi, axis=1).mean()))
    return {"t": [float(ts[r["step"]]) for r in rows], "rel_err_g": err_g, "rel_err_g_plus_phi": err_gphi,
            "norm_exact": norm_exact, "norm_g": norm_g, "norm_g_phi": norm_phi,
            "loss_first": float(np.mean(losses[:3])), "loss_last": float(np.mean(losses[-3:]))}


def _final(runs: list[dict]) -> dict:
    keys = ("reward", "kl_path", "kl_data", "kl_target", "ed_target", "seconds", "nfe")
    return {**{f"{k}_mean": float(np.mean([r["curve"][-1][k] for r in runs])) for k in keys},
            **{f"{k}_std": float(np.std([r["curve"][-1][k] for r in runs])) for k in keys}}


def _plots(out: pathlib.Path, results: dict, vs: list[dict], fidelity: dict) -> list[str]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return []
    written = []
    # Fig. 8: norms along generation
    fig = Figure(figsize=(11, 3.2), dpi=90)
    FigureCanvasAgg(fig)
    panels = [("vgg-flow-rsm + g_phi", "VGG-Flow: |g_phi| vs |g| (Tweedie)"),
              ("residual + h_phi + backward loss", "Residual nabla-DB: |h_phi| vs |lambda g|")]
    for j, (label, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, j + 1)
        n = results[label][0]["norms"]
        learned = np.mean([r["norms"]["learned"] for r in results[label]], 0)
        analytic = np.mean([r["norms"]["analytic"] for r in results[label]], 0)
        ax.plot(n["t"], analytic, "k-", label="analytic term")
        ax.plot(n["t"], learned, "r-", label="learned term")
        ax.set_xlabel("t (1 = noise)", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(fidelity["t"], fidelity["rel_err_g"], "k-", label="g (Tweedie)")
    ax.plot(fidelity["t"], fidelity["rel_err_g_plus_phi"], "r-", label="g + g_phi")
    ax.set_xlabel("t (1 = noise)", fontsize=8)
    ax.set_ylabel("rel. error vs exact grad r(x0(x_t))", fontsize=7)
    ax.set_title("is the learned refinement right? (fixed model)", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig8_norms.png", format="png")
    written.append(str(out / "fig8_norms.png"))
    # Figs. 9-11: reward vs seconds and reward vs KL
    figs = ["9", "10", "11"]
    fig = Figure(figsize=(11, 6), dpi=90)
    FigureCanvasAgg(fig)
    for j, f in enumerate(figs):
        members = [v for v in vs if v["fig"] == f]
        for row, (xkey, xlabel) in enumerate((("seconds", "training seconds"), ("kl_data", "KL(p_theta || p_data)"))):
            ax = fig.add_subplot(2, 3, row * 3 + j + 1)
            for v in members:
                runs = results[v["label"]]
                x = np.mean([[p[xkey] for p in r["curve"]] for r in runs], 0)
                y = np.array([[p["reward"] for p in r["curve"]] for r in runs])
                ax.plot(x, y.mean(0), "o-", ms=3, label=v["label"])
                if len(runs) > 1:
                    ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.15, lw=0)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("mean reward", fontsize=8)
            ax.set_title(f"Fig. {f}", fontsize=8)
            ax.legend(fontsize=6)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig9_11_ablations.png", format="png")
    written.append(str(out / "fig9_11_ablations.png"))
    return written


def run(out: pathlib.Path, quick: bool = False, seed: int = 0) -> dict:
    threads = rsm.build_info().get("num_threads", 1)
    rsm.set_num_threads(1)  # tiny 2D batches: one thread is fastest (see fig3_6_finetune)
    try:
        return _run(pathlib.Path(out), quick, seed)
    finally:
        rsm.set_num_threads(max(1, int(threads)))


def _run(out: pathlib.Path, quick: bool, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    toy = toy_lib.make_toy(quick, seed, ("flow", "vp"))
    steps, n_evals, batch = (25, 2, 8) if quick else (60, 4, 16)
    seeds = [seed + k for k in range(1 if quick else toy_lib.full_seeds())]
    vs = [v for v in variants() if not (quick and v.get("full_only"))]
    results: dict[str, list[dict]] = {v["label"]: [] for v in vs}
    # seeds outermost: after each pass, partial.json holds every variant over the seeds so far
    for s in seeds:
        for v in vs:
            t0 = time.perf_counter()
            results[v["label"]].append(_run_variant(toy, v, steps, n_evals, s, batch))
            if not quick:
                print(f"[{NAME}] seed {s} {v['label']}: {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr, flush=True)
        if not quick:
            (out / "partial.json").write_text(json.dumps(
                {"seeds": seeds[:seeds.index(s) + 1], "wall_seconds": time.perf_counter() - start,
                 "cpu_seconds": time.process_time() - cpu_start,
                 "variants": {v["label"]: {"fig": v["fig"], **_final(results[v["label"]])} for v in vs}},
                indent=1, default=float))
    fidelity = g_phi_fidelity(toy, 40 if quick else 120, seed, batch)
    summary: dict[str, Any] = {"seeds": seeds, "iterations": steps,
                               "variants": {v["label"]: {"fig": v["fig"], **_final(results[v["label"]])} for v in vs},
                               "norms": {}, "g_phi_fidelity": fidelity,
                               "target": toy_lib.exact_reference_numbers(toy)}
    for label in ("vgg-flow-rsm + g_phi", "residual + h_phi (forward loss)", "residual + h_phi + backward loss"):
        learned = np.mean([r["norms"]["learned"] for r in results[label]], 0)
        analytic = np.mean([r["norms"]["analytic"] for r in results[label]], 0)
        summary["norms"][label] = {"t": results[label][0]["norms"]["t"], "learned": learned.tolist(),
                                   "analytic": analytic.tolist(),
                                   "mean_ratio": float(np.mean(learned / analytic)),
                                   "max_ratio": float(np.max(learned / analytic))}
    summary["figures"] = _plots(out, results, vs, fidelity)
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = ["iteration", "seconds", "nfe", "reward", "kl_path", "kl_data", "kl_target", "ed_target"]
        w.writerow(["variant", "seed"] + keys)
        for label, runs in results.items():
            for s, r in enumerate(runs):
                for p in r["curve"]:
                    w.writerow([label, s] + [f"{p[k]:.6g}" for k in keys])
    lines = ["| fig | variant | reward | kl_path | KL(p‖p_data) | KL(p‖p*) | energy dist. to p* | train s | NFE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, m in summary["variants"].items():
        lines.append(f"| {m['fig']} | {label} | {m['reward_mean']:.3f} ± {m['reward_std']:.3f} | "
                     f"{m['kl_path_mean']:.3g} ± {m['kl_path_std']:.2g} | "
                     f"{m['kl_data_mean']:.2f} ± {m['kl_data_std']:.2f} | {m['kl_target_mean']:.2f} ± {m['kl_target_std']:.2f} | "
                     f"{m['ed_target_mean']:.3f} ± {m['ed_target_std']:.3f} | {m['seconds_mean']:.1f} | {m['nfe_mean']:.3g} |")
    lines += ["", "| learned term | mean |learned|/|analytic| over t | max |", "|---|---|---|"]
    for label, n in summary["norms"].items():
        lines.append(f"| {label} | {n['mean_ratio']:.3f} | {n['max_ratio']:.3f} |")
    f = fidelity
    lines += ["", f"g_phi fidelity (fixed reference, {len(f['t'])} steps): consistency loss "
                  f"{f['loss_first']:.4f} -> {f['loss_last']:.4f}; mean relative error to the exact "
                  f"pathwise value gradient: g {np.mean(f['rel_err_g']):.3f}, g + g_phi {np.mean(f['rel_err_g_plus_phi']):.3f}"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    summary["wall_seconds"] = time.perf_counter() - start
    summary["cpu_seconds"] = time.process_time() - cpu_start
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
