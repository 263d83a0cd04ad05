import json
import math

import pytest

from insanesr_dist.training.state import TrainState

# train_state.json as stop 22's toolkit wrote it (before TrainState held the stream and renamed `passes`)
BEFORE_THE_TRAINER = {
    "epoch": 3,
    "batches_done": 4,
    "step": 26,
    "best_jm": 44.5,
    "loss_sum": 1.25,
    "passes": 4,
    "finished": False,
    "processes": 2,
    "precision": "bf16",
    "steps_per_epoch": 11,
    "total_steps": 110,
    "stale_validations": 1,
    "stale_reference": 44.5,
}


def test_a_state_saved_before_the_trainer_loads_under_todays_names():
    state = TrainState.from_state_dict(json.loads(json.dumps(BEFORE_THE_TRAINER)))
    assert (state.epoch, state.batches_done, state.step, state.loss_batches) == (3, 4, 26, 4)
    assert state.stream is None and state.last_checkpoint == 26  # the start counts as the latest checkpoint
    assert state.state_dict() == {
        **{k: v for k, v in BEFORE_THE_TRAINER.items() if k != "passes"},
        "loss_batches": 4,
        "stream": None,
    }


def test_the_saved_fields_round_trip_through_json_and_the_in_memory_ones_start_afresh():
    state = TrainState(step=7, stream={"shards": [1, 2], "rows": 5})
    state.validated({"jm": 40.0}, min_delta=0.0)
    state.last_submission = 7
    saved = json.loads(json.dumps(state.state_dict()))
    assert not {"last_validation", "last_submission", "last_checkpoint"} & set(saved)
    again = TrainState.from_state_dict(saved)
    assert again.state_dict() == state.state_dict() and again.best_jm == 40.0
    assert (again.last_validation, again.last_submission) == ((-1, {}), -1)
    assert math.isinf(TrainState.from_state_dict(TrainState().state_dict()).best_jm)


def test_an_unknown_field_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown training state field.*: shards_left"):
        TrainState.from_state_dict({"step": 1, "shards_left": 3})


def test_the_early_stop_count_and_a_new_epoch():
    state = TrainState(step=5)
    assert state.validated({"jm": 10.0}, min_delta=0.5) and state.stale_validations == 0
    assert state.validated({"jm": 10.4}, min_delta=0.5)  # a new best, but not by the delta: still stale
    assert state.best_jm == 10.4 and state.stale_validations == 1 and state.stale_reference == 10.0
    assert not state.validated({"jm": 10.2}, min_delta=0.5) and state.stale_validations == 2
    assert state.out_of_patience(2) and not state.out_of_patience(3) and not state.out_of_patience(0)
    assert state.scores_now() == {"jm": 10.2}
    state.step += 1
    assert state.scores_now() == {}
    state.batches_done, state.loss_sum, state.loss_batches = 9, 3.0, 9
    state.next_epoch()
    assert (state.epoch, state.batches_done, state.loss_sum, state.loss_batches) == (2, 0, 0.0, 0)
