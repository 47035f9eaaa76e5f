"""Training: the state and optimizer, the pure steps and `bind_steps`, the run directory and the loop.

It imports the plug points (objectives, models, data) and nothing in them imports it.
"""

from ae_jax.train.logwindow import LogWindow
from ae_jax.train.loop import itstime, report, train_and_evaluate
from ae_jax.train.rundir import TIMINGS, check_workdir, compare_runs
from ae_jax.train.state import (
    EmaState,
    TrainState,
    create_train_state,
    eval_params,
    learning_rate,
    make_optimizer,
    run_keys,
    track_ema,
)
from ae_jax.train.steps import (
    AUTO_STEPS_PER_CALL,
    Steps,
    bind_steps,
    build_model,
    eval_step,
    evaluate,
    resolve_steps_per_call,
    split_step_key,
    train_step,
)

__all__ = [
    "AUTO_STEPS_PER_CALL", "EmaState", "LogWindow", "Steps", "TIMINGS", "TrainState", "bind_steps",
    "build_model",
    "check_workdir", "compare_runs", "create_train_state", "eval_params", "eval_step", "evaluate", "itstime",
    "learning_rate", "make_optimizer", "report", "resolve_steps_per_call", "run_keys", "split_step_key",
    "track_ema", "train_and_evaluate", "train_step",
]
