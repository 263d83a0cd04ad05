"""What the training loop (trainer.py) is made of, each piece small enough to test alone: where a run stands (state),
the loss (losses), Adam and the learning rate as a function of the step (optimizer), the weight EMA (ema), skipped
non-finite steps and I/O failures (faults), checkpoints and what to resume from (checkpoint, resume), the
SIGTERM/SIGUSR1 flag and SLURM requeue (preemption), when every rank reads them (cadence), processes, threads and
precision (runtime, precision, host_memory), speed meters (meters), and TensorBoard and the other trackers
(tracking).

It sits above data, model and config and below inference and scoring: it never runs a model on images itself
(the loop hands tracking its panels ready-made).
"""
