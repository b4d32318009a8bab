"""Figs. 3-6 on images: baselines vs RSM redesigns fine-tuning class-conditional DiTs with LoRA
adapters and classifier-free-guided rollouts (THEORY.md §9, §14; issue 4 "on images", issue 5 "DiT
with CFG and LoRA end to end on digits and procedural images with all four reward kinds").

References (pretrained once per run and cached in the output folder; reused when present):
  digits  rsm.DiT on scikit-learn's 8x8 digits (1 channel), prompt = digit class
  shapes  rsm.DiT on rsm.image_datasets.shapes (16x16 RGB), prompt = class id of a ShapePrompt
both by flow matching with condition dropout (the null class of classifier-free guidance).

Fine-tuning: policy = Guided(lora(ref), w), reference = Guided(ref, w): the adapters are the only
trainable weights, the base stays frozen (checked bitwise), and every rollout and loss is guided.
Tasks (one per reward kind of issue 5):
  digit-prob  zeroth order, black box: scikit-learn probability of the prompted digit
  jpeg        zeroth order, black box: JPEG compressibility (-kB) of the shapes model's images
  geneval     zeroth order, discrete: the GenEval-like ShapeChecker on the shapes model
  digit-logp  first order: log p(digit | x) of a differentiable rsm classifier
Zeroth-order tasks run Flow-GRPO and TempFlow-GRPO (baselines) against rsm-zo (redesign); the
first-order task runs VGG-Flow (baseline) against rsm-fo (terminal estimator).

Recorded at evenly spaced marks of the network-evaluation budget: the mean reward of guided ODE
samples from fixed noise (same prompts and seeds for every method), training NFE, training wall
seconds (evaluation excluded) and the path KL to the reference from the last rollout. Compute
ratio per baseline/redesign pair as in fig3-6-finetune: baseline's final mean reward R_b reached
at its budget N_b; ratio = N_b / (NFE at which the redesign's mean curve first reaches R_b), nan
if it never does.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
import time
from typing import Any

import numpy as np

import rsm
from rsm import image_datasets, image_rewards
from rsm import methods as _methods
from rsm.image_demo import pretrain_conditional

from .fig3_6_finetune import compute_ratio

NAME = "images-finetune"
TITLE = "Figs. 3-6 on images: LoRA + CFG fine-tuning of DiTs, baselines vs RSM redesigns, four reward kinds"

GUIDANCE = 1.5


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"digits_dit": (8, 1, 4, 16, 1, 2), "shapes_dit": (16, 3, 8, 16, 1, 2),
                "pretrain_steps": 30, "pretrain_batch": 64, "n_shapes": 360,
                "sample_steps": 4, "eval_per_prompt": 2, "shape_prompts": 6,
                "batch": 4, "group": 4, "iters": 3, "seeds": 1, "rank": 2, "clf_steps": 60}
    return {"digits_dit": (8, 1, 2, 32, 2, 4), "shapes_dit": (16, 3, 4, 32, 2, 4),
            "pretrain_steps": 2000, "pretrain_batch": 128, "n_shapes": 3600,
            "sample_steps": 10, "eval_per_prompt": 8, "shape_prompts": 12,
            "batch": 6, "group": 6, "iters": 48, "seeds": 3, "rank": 4, "clf_steps": 600}


# (task, method, is_baseline); lr and reward scale shared within a family
_TASKS = {
    "digit-prob": ("digits", [("flow-grpo", True), ("tempflow-grpo", True), ("rsm-zo", False)]),
    "jpeg": ("shapes", [("flow-grpo", True), ("tempflow-grpo", True), ("rsm-zo", False)]),
    "geneval": ("shapes", [("flow-grpo", True), ("tempflow-grpo", True), ("rsm-zo", False)]),
    "digit-logp": ("digits", [("vgg-flow", True), ("rsm-fo", False)]),
}
# LoRA adapters take a larger step than the presets' full-weight lr (1e-3); 2 optimizer updates per
# rollout for the zeroth-order family as in fig3-6-finetune (the trust region acts)
ZO = {"lr": 2e-3, "inner_epochs": 2}
FO = {"lr": 2e-3}
LAMBDA_FO = 1.0


def _pretrained(out: pathlib.Path, which: str, sz: dict, seed: int) -> tuple[Any, dict]:
    """The cached reference of `which` ("digits" / "shapes"), pretrained when absent."""
    file = out / f"{which}_dit{'_quick' if sz['pretrain_steps'] < 100 else ''}_seed{seed}.safetensors"
    if which == "digits":
        data = image_datasets.digits("train", seed=seed)
        num_classes = 10
    else:
        data = image_datasets.shapes(sz["n_shapes"], seed=seed)
        num_classes = data.num_classes
    info = {"file": file.name, "cached": file.exists(), "n_train": len(data)}
    if file.exists():
        return rsm.load(str(file)), info
    size, ch, patch, width, depth, heads = sz[f"{which}_dit"]
    model = rsm.DiT(size, ch, patch, width, depth, heads, num_classes, seed=seed)
    t0 = time.perf_counter()
    losses = pretrain_conditional(model, data.flat(), np.asarray(data.labels, dtype=np.int64),
                                  rsm.FlowPath(), steps=sz["pretrain_steps"], batch_size=sz["pretrain_batch"],
                                  lr=2e-3, seed=seed, cond_dropout=0.1)
    info.update(seconds=time.perf_counter() - t0, loss_start=float(losses[:10].mean()),
                loss_end=float(losses[-10:].mean()))
    model.save(str(file))
    return model, info


class _Recorder:
    """Wraps a reward so every call's condition layout is logged (the test checks it)."""

    def __init__(self, inner: rsm.Reward) -> None:
        self.inner, self.layouts = inner, []
        self.zero_std = self.groups = 0

        def fn(x0: Any, cond: Any = None):
            c = None if cond is None else np.asarray(np.from_dlpack(cond) if hasattr(cond, "__dlpack__")
                                                      and not isinstance(cond, np.ndarray) else cond)
            self.layouts.append(None if c is None else (c.dtype.kind, c.shape, int(x0.shape[0])))
            out = inner.fn(x0, cond)
            if c is not None and c.ndim == 1:  # prompts whose samples in this call all scored the same
                r = np.asarray(out[0] if isinstance(out, tuple) else out)
                for k in np.unique(c):
                    same = r[c == k]
                    self.groups += 1
                    self.zero_std += int(len(same) > 1 and np.all(same == same[0]))
            return out

        self.reward = rsm.Reward(fn, differentiable=inner.differentiable, name=inner.name)

    def value(self, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = self.inner.fn(rsm.from_dlpack(np.ascontiguousarray(x)), ids)
        return np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)


def _rewards(sz: dict, seed: int) -> dict[str, _Recorder]:
    sk = image_rewards.digit_classifier(seed)
    clf = image_rewards.digit_rsm_classifier(seed, steps=sz["clf_steps"])
    return {"digit-prob": _Recorder(image_rewards.digit_probability(sk)),
            "jpeg": _Recorder(image_rewards.jpeg_compressibility((3, 16, 16))),
            "geneval": _Recorder(image_rewards.geneval(16)),
            "digit-logp": _Recorder(image_rewards.digit_log_probability(clf))}


def _prompts(which: str, sz: dict, seed: int) -> np.ndarray:
    if which == "digits":
        return np.arange(10, dtype=np.int64)
    rng = np.random.default_rng(seed + 11)
    return np.sort(rng.choice(len(image_datasets.shape_prompts(16)), sz["shape_prompts"], replace=False)).astype(np.int64)


def _evaluate(model: Any, rec: _Recorder, prompts: np.ndarray, sz: dict) -> tuple[float, np.ndarray]:
    """(mean reward, samples) of guided ODE samples from fixed noise: eval_per_prompt per prompt."""
    ids = np.repeat(prompts, sz["eval_per_prompt"])
    x = np.from_dlpack(rsm.sample(model, len(ids), rsm.FlowPath(), "ode", steps=sz["sample_steps"],
                                  cond=ids, seed=1234)).astype(np.float32)
    x = np.clip(x, -1.0, 1.0)
    return float(rec.value(x, ids).mean()), x


def _run_one(ref: Any, rec: _Recorder, method: str, prompts: np.ndarray, sz: dict, seed: int,
             budget: float | None, n_marks: int) -> dict:
    preset = _methods.get(method)
    fam = FO if preset["family"] in ("first-order", "pathwise") else ZO
    overrides = dict(fam)
    if "reward_scale" in preset and fam is FO:
        overrides["reward_scale"] = LAMBDA_FO * (2.0 if method == "vgg-flow" else 1.0)
    overrides = {k: v for k, v in overrides.items() if k in preset}
    adapters = rsm.lora(ref, rank=sz["rank"], seed=seed)
    policy, reference = rsm.Guided(adapters, GUIDANCE), rsm.Guided(ref, GUIDANCE)
    # kl_every=0: this study records its own drift measure at the marks (the history's kl_path
    # would cost a DiT evaluation pass per iteration)
    trainer = rsm.Trainer(policy, reference, rec.reward, method, seed=seed, conditions=prompts,
                          batch_size=min(sz["batch"], len(prompts)), group_size=sz["group"],
                          kl_every=0, **overrides)
    zero0, groups0 = rec.zero_std, rec.groups
    curve: list[dict] = []
    nfe = seconds = 0.0
    kl = 0.0
    history = []

    x_ref = _evaluate(reference, rec, prompts, sz)[1]

    def record() -> None:
        # drift: mean squared pixel distance to the reference's sample from the same noise, a
        # method-independent measure of how far the policy moved (the Trainer's "kl" sums the
        # path KL over the steps a method trains, which differ between methods)
        reward, x = _evaluate(policy, rec, prompts, sz)
        curve.append({"nfe": nfe, "seconds": seconds, "kl": kl, "steps": trainer.iteration,
                      "reward": reward, "drift": float(((x - x_ref) ** 2).mean())})

    record()
    if budget is None:  # fixed iteration count: the budget is the first method's NFE
        every = max(1, sz["iters"] // n_marks)
        for it in range(1, sz["iters"] + 1):
            row = trainer.step()
            nfe, seconds, kl = nfe + row["nfe"], seconds + row["seconds"], float(row.get("kl", 0.0))
            history.append(row)
            if it % every == 0 or it == sz["iters"]:
                record()
    else:
        marks = [budget * k / n_marks for k in range(1, n_marks + 1)]
        k = 0
        while k < len(marks):
            row = trainer.step()
            nfe, seconds, kl = nfe + row["nfe"], seconds + row["seconds"], float(row.get("kl", 0.0))
            history.append(row)
            while k < len(marks) and nfe >= marks[k] - 1e-9:
                record()
                k += 1
    return {"curve": curve, "policy": policy, "adapters": adapters,
            "zero_std_groups": rec.zero_std - zero0, "prompt_groups": rec.groups - groups0,
            "iterations": trainer.iteration,
            "train_reward_first": float(history[0]["reward_mean"]) if history else float("nan"),
            "train_reward_last": float(history[-1]["reward_mean"]) if history else float("nan")}


def run(out: pathlib.Path, quick: bool = False, seed: int = 0) -> dict:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sz = _sizes(quick)
    t_start = time.perf_counter()
    refs, ref_info = {}, {}
    for which in ("digits", "shapes"):
        refs[which], ref_info[which] = _pretrained(out, which, sz, seed)
    recs = _rewards(sz, seed)
    base_params = {w: np.from_dlpack(m.params).copy() for w, m in refs.items()}

    # NFE budget per task: what the first baseline uses in `iters` iterations (measured on seed 0)
    results: dict[str, dict[str, list[dict]]] = {}
    budgets: dict[str, float] = {}
    n_marks = 2 if quick else 4
    for task, (which, methods) in _TASKS.items():
        prompts = _prompts(which, sz, seed)
        results[task] = {}
        for method, _ in methods:
            runs = []
            for s in range(sz["seeds"]):
                r = _run_one(refs[which], recs[task], method, prompts, sz, seed + s,
                             budgets.get(task), n_marks)
                if task not in budgets:
                    budgets[task] = r["curve"][-1]["nfe"]
                runs.append(r)
                c = r["curve"][-1]
                print(f"  {task:<10} {method:<14} seed {seed + s}: reward {r['curve'][0]['reward']:.4f} -> "
                      f"{c['reward']:.4f}  NFE {c['nfe']:.0f}  {c['seconds']:.1f} s  KL {c['kl']:.4f}", flush=True)
            results[task][method] = runs

    base_unchanged = {w: bool(np.array_equal(np.from_dlpack(m.params), base_params[w])) for w, m in refs.items()}

    # ---- tables ------------------------------------------------------------------------------
    rows, ratios = [], []
    for task, (which, methods) in _TASKS.items():
        for method, is_base in methods:
            runs = results[task][method]
            r0 = np.mean([r["curve"][0]["reward"] for r in runs])
            r1 = [r["curve"][-1]["reward"] for r in runs]
            rows.append({"task": task, "method": method, "baseline": is_base, "reward_start": float(r0),
                         "reward_final": float(np.mean(r1)), "reward_final_std": float(np.std(r1)),
                         "nfe": float(np.mean([r["curve"][-1]["nfe"] for r in runs])),
                         "seconds": float(np.mean([r["curve"][-1]["seconds"] for r in runs])),
                         "kl": float(np.mean([r["curve"][-1]["kl"] for r in runs])),
                         "drift": float(np.mean([r["curve"][-1]["drift"] for r in runs])),
                         "zero_std_groups": float(np.mean([r["zero_std_groups"] for r in runs]))})
        redesign = [m for m, b in methods if not b][0]
        for method, is_base in methods:
            if not is_base:
                continue
            for axis in ("nfe", "seconds"):
                cr = compute_ratio(_curves(results[task][method]), _curves(results[task][redesign]), axis)
                ratios.append({"task": task, "baseline": method, "redesign": redesign, "axis": axis, **cr})

    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "method", "seed", "steps", "nfe", "seconds", "kl", "drift", "reward"])
        for task in results:
            for method, runs in results[task].items():
                for s, r in enumerate(runs):
                    for c in r["curve"]:
                        w.writerow([task, method, seed + s, c["steps"], c["nfe"], f"{c['seconds']:.3f}",
                                    f"{c['kl']:.6g}", f"{c['drift']:.6g}", f"{c['reward']:.6g}"])
    lines = ["| task | method | reward start | reward final (± std over seeds) | NFE | train s | path KL (trained steps) | drift | zero-std prompts |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']}{'' if r['baseline'] else ' (redesign)'} | {r['reward_start']:.4f} | "
                     f"{r['reward_final']:.4f} ± {r['reward_final_std']:.4f} | {r['nfe']:.0f} | {r['seconds']:.1f} | "
                     f"{r['kl']:.4f} | {r['drift']:.4f} | {r['zero_std_groups']:.0f} |")
    lines += ["", "| task | baseline | redesign | axis | baseline final | redesign final | redesign reaches it at | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for c in ratios:
        reach = ("never" if math.isnan(c["redesign_reach"]) else
                 "at start (baseline did not improve)" if c["redesign_reach"] == 0 else f"{c['redesign_reach']:.1f}")
        ratio = "—" if math.isnan(c["ratio"]) else f"{c['ratio']:.2f}x"
        lines.append(f"| {c['task']} | {c['baseline']} | {c['redesign']} | {c['axis']} | {c['baseline_final_reward']:.4f} | "
                     f"{c['redesign_final_reward']:.4f} | {reach} | {ratio} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(results, out)

    layouts = {task: sorted({str(l) for l in recs[task].layouts}) for task in recs}
    summary = {"quick": quick, "seed": seed, "seeds": sz["seeds"], "guidance": GUIDANCE,
               "refs": ref_info, "budgets": budgets, "rows": rows, "ratios": ratios,
               "base_unchanged": base_unchanged, "reward_calls": {t: len(recs[t].layouts) for t in recs},
               "cond_layouts": layouts, "seconds_total": time.perf_counter() - t_start}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print("\n".join(lines))
    return summary


def _curves(runs: list[dict]) -> list[dict]:
    return [{"curve": r["curve"]} for r in runs]


def _plot(results: dict, out: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tasks = list(results)
    fig, axes = plt.subplots(len(tasks), 4, figsize=(12, 2.3 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for method, runs in results[task].items():
            length = min(len(r["curve"]) for r in runs)
            get = lambda key: np.array([[r["curve"][k][key] for k in range(length)] for r in runs])
            y = get("reward")
            for j, key in enumerate(("nfe", "seconds", "kl", "drift")):
                axes[i, j].errorbar(get(key).mean(0), y.mean(0), yerr=y.std(0), marker="o", ms=3,
                                    capsize=2, label=method)
        axes[i, 0].set_ylabel(f"{task}\nreward")
        for j, lab in enumerate(("network evaluations", "training seconds", "path KL, trained steps (last rollout)",
                                 "drift: mean sq. pixel dist. to ref")):
            axes[len(tasks) - 1, j].set_xlabel(lab)
        axes[i, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "images_finetune.png", dpi=90)
    plt.close(fig)
