"""One rank of a data-parallel test run (tests/test_distributed.py starts it under mpiexec or
torchrun, or as a plain process): runs a scenario and writes what the test compares to
OUT.rank<r>.npz. Usage: python tests/dist_worker.py BACKEND SCENARIO OUT [key=value ...]."""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import rsm  # noqa: E402
from rsm import distributed  # noqa: E402


def arg(opts, key, default):
    return type(default)(opts[key]) if key in opts else default


def data_and_model(opts, rank):
    rng = np.random.default_rng(0)
    dtype = opts.get("dtype", "float64")
    data = rng.normal(size=(64, 2)).astype(dtype)
    hidden = arg(opts, "hidden", 16) + (arg(opts, "bad_hidden", 0) if rank == 1 else 0)
    model = rsm.MLP(2, hidden, 2, seed=1, temb_dim=4, dtype=dtype)
    return data, model


def pretrain(comm, opts, out):
    data, model = data_and_model(opts, comm.rank)
    kw = {}
    if "resume" in opts:
        kw["resume"] = opts["resume"]
    if "checkpoint" in opts:
        kw["checkpoint"] = opts["checkpoint"]
    hist = rsm.pretrain(model, data, rsm.FlowPath(), steps=arg(opts, "steps", 4), batch_size=16,
                        lr=1e-2, seed=3, progress=False, comm=comm, dp_tiles=arg(opts, "tiles", 4),
                        dp_exact=bool(arg(opts, "exact", 1)),
                        lr_schedule=opts.get("schedule", "cosine"), warmup_steps=1,
                        **kw)
    if arg(opts, "die_at_end", 0) and comm.rank == 1:
        os._exit(3)
    return {"params": np.array(np.from_dlpack(model.params)),
            "loss": hist.column("loss"), "grad_norm": hist.column("grad_norm")}


def finetune(comm, opts, out):
    dtype = "float64"
    policy = rsm.MLP(2, 16, 2, seed=1, temb_dim=4, dtype=dtype)
    hidden_ref = 16 + (arg(opts, "bad_hidden", 0) if comm.rank == 1 else 0)
    ref = rsm.MLP(2, hidden_ref, 2, seed=1, temb_dim=4, dtype=dtype)
    policy.load_params(np.from_dlpack(ref.params)[: policy.num_params]) if hidden_ref == 16 else None
    method = opts.get("method", "flow-grpo")
    if arg(opts, "bad_method", 0) and comm.rank == 1:
        method = "dance-grpo"
    die = arg(opts, "die_at", -1)

    calls = {"n": 0}

    def reward(x, cond):
        calls["n"] += 1
        if die >= 0 and comm.rank == 1 and calls["n"] > die:
            os._exit(3)
        x = np.from_dlpack(x)
        return -np.sum((x - 1.0) ** 2, axis=1)

    overrides = {"sampler_steps": 4, "kl_every": 0, "lr": 1e-2}
    if method == "rsm-zo":
        overrides.update(sampler_steps=6, budget=[2, 2, 0, 0, 0])
    if "epochs" in opts:
        overrides["inner_epochs"] = int(opts["epochs"])
    trainer = rsm.Trainer(policy, ref, reward, method, batch_size=4, group_size=4, seed=5,
                          comm=comm, dp_tiles=arg(opts, "tiles", 4), **overrides)
    if "resume" in opts:
        trainer.load_checkpoint(opts["resume"])
    digests = []
    for _ in range(trainer.iteration, arg(opts, "iterations", 3)):
        trainer.step()
        digests.append(distributed.digest(policy.params))
    if "checkpoint" in opts:
        trainer.save_checkpoint(opts["checkpoint"])
    keys = ["reward_mean", "reward_std", "loss", "kl", "clip_fraction", "grad_norm", "rows"]
    return {"params": np.array(np.from_dlpack(policy.params)), "digests": np.array(digests, dtype=np.int64),
            **{k: trainer.history.column(k) for k in keys}}


def hang(comm, opts, out):
    buf = np.ones(8)
    if comm.rank == 1:
        time.sleep(60)
    comm.allreduce(buf)
    return {"buf": buf}


def main():
    backend, scenario, out = sys.argv[1:4]
    opts = dict(kv.split("=", 1) for kv in sys.argv[4:])
    comm = distributed.init(backend, timeout=float(opts.get("timeout", 60)))
    result = {"pretrain": pretrain, "finetune": finetune, "hang": hang}[scenario](comm, opts, out)
    result["world_size"] = np.array(comm.world_size)
    np.savez(f"{out}.rank{comm.rank}.npz", **result)
    comm.barrier()
    comm.close()


if __name__ == "__main__":
    main()
