"""The typed rollout records (rsm.methods.batch, issue 12): every rollout kind returns a Batch of
Row records, the rows keep the dict access of the row dicts they replace (the compatibility the
code written against the dicts relies on), and rows built as dicts still train bitwise the same
(they become Rows once, in the batch, when the update reads them)."""
import numpy as np
import pytest

import rsm
from rsm.methods import update
from rsm.methods.batch import Batch, Row
from toy_models import make_models


def _row():
    return Row(step=2, x=np.zeros((3, 2)), traj=np.arange(3), u_old=np.ones((3, 2)))


def test_row_mapping_access():
    row = _row()
    assert row["step"] == 2 and row["x"] is row.x and row["cond"] is None
    assert "u_old" in row and "log_prob" not in row and "noise" not in row
    assert row.get("window") is None and row.get("window", (0, 1)) == (0, 1)
    assert row.get("weight") == 1.0 and row.get("anchor", True) is False
    row["index"] = 4                   # a field
    row["own_note"] = "kept"           # no field: kept apart, in the mapping view only
    assert row.index == 4 and row["own_note"] == "kept" and "own_note" in row
    assert set(row) == set(row.keys()) == {"step", "x", "weight", "count", "traj", "u_old",
                                           "anchor", "index", "u_ref_ready", "own_note"}
    assert dict(row)["u_old"] is row.u_old and {**row}["own_note"] == "kept"
    with pytest.raises(KeyError):
        row["nothing"]
    assert row.pop("index") == 4 and row.index is None and "index" not in row
    with pytest.raises(AttributeError):   # slots: a misspelt attribute is an error, not a field
        row.u_olds = 1


def test_row_copy_and_replace_are_shallow_and_independent():
    row = _row()
    row["note"] = 1
    other = row.replace(step=3, traj=row.traj + 10)
    other["note"] = 2
    assert (row.step, other.step, row["note"], other["note"]) == (2, 3, 1, 2)
    assert other.x is row.x and np.array_equal(other.traj, np.arange(10, 13))
    copy = row.copy()
    assert copy is not row and copy.x is row.x and copy.keys() == row.keys()


def test_row_of_a_dict():
    d = {"step": 1, "x": np.zeros((2, 2)), "traj": np.arange(2), "weight": 0.5, "extra_key": 7}
    row = Row.of(d)
    assert isinstance(row, Row) and row.weight == 0.5 and row["extra_key"] == 7
    assert Row.of(row) is row


@pytest.mark.parametrize("method, rollout, options", [
    ("flow-grpo", "sde", {}), ("branch-grpo-rsm", "tree", {"split": 1}),
    ("rsm-zo", "branch", {"budget": [2, 0, 4, 0]}), ("rsm-fo", "ode", {}),
    ("refl", "refl", {"late_steps": 2}),
])
def test_every_rollout_kind_returns_rows(method, rollout, options):
    policy, ref = make_models(3)
    reward = rsm.rewards.gmm_logpdf([[2.0, 0.0], [-1.0, 1.0]], [0.7, 0.5], [0.3, 0.7])
    trainer = rsm.Trainer(policy, ref, reward, method, batch_size=2, group_size=2,
                          sampler_steps=4, **options)
    assert trainer.cfg["rollout"] == rollout
    batch = trainer.rollout()
    assert isinstance(batch, Batch) and batch.rows
    assert all(type(r) is Row for r in batch.rows + batch.anchor_rows)


def test_dict_rows_train_bitwise_as_rows():
    """Rows as dicts (code written before Row) give the gradient the Rows give, and become Rows
    in the batch, so their reference-output buffer lasts across calls."""
    policy, ref = make_models(5)
    reward = rsm.rewards.gmm_logpdf([[2.0, 0.0], [-1.0, 1.0]], [0.7, 0.5], [0.3, 0.7])
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=2, group_size=4,
                          sampler_steps=4)
    batch = trainer.rollout()
    as_dicts = batch.copy()
    as_dicts.rows = [dict(r) for r in batch.rows]
    g_rows, _ = trainer.loss_and_grad(batch)
    g_dicts, _ = trainer.loss_and_grad(as_dicts)
    assert g_rows.tobytes() == g_dicts.tobytes()
    assert all(type(r) is Row and r.u_ref_ready for r in as_dicts.rows)
    assert update.signal_rows(as_dicts) == update.signal_rows(batch)
