"""The run's record never claims more than its checkpoint holds."""

from __future__ import annotations

from capsroute.run.record import TrainState, keep_saved


def state_after(epochs: int) -> TrainState:
    return TrainState(
        epoch=epochs,
        step=10 * epochs,
        metrics=[{"epoch": e, "test_acc": 0.1 * e} for e in range(1, epochs + 1)],
        routing=[{"epoch": e, "iteration": k} for e in range(1, epochs + 1) for k in (1, 2)],
        wall_seconds=1.0,
    )


def test_an_epoch_counted_but_not_saved_is_forgotten() -> None:
    state = state_after(3)  # epoch 3 counted; an exit landed before its checkpoint was written
    keep_saved(state, 2)
    assert state.epoch == 2
    assert [row["epoch"] for row in state.metrics] == [1, 2]
    assert [row["epoch"] for row in state.routing] == [1, 1, 2, 2]


def test_a_saved_epoch_is_kept() -> None:
    state = state_after(3)
    keep_saved(state, 3)
    assert state.epoch == 3 and len(state.metrics) == 3 and len(state.routing) == 6
