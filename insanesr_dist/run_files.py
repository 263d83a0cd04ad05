"""The files of a run directory: training writes them; resume, export, study and --init-from read them.

OUT/config.json               the resolved settings (also inside each checkpoint)
OUT/latest.safetensors        weights after the last validation (+ metadata: epoch, step, JM)
OUT/best.safetensors          weights of the best validation JM (+ metadata)
OUT/metrics.jsonl             one line per epoch
OUT/submissions/*.csv         id, Encoded Image (base64 PNG)
OUT/checkpoints/step_NNNNNNNN the full training state, for resume
OUT/logs/                     TensorBoard (and the other trackers' files)
"""

CONFIG = "config.json"
LATEST = "latest.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
SUBMISSIONS = "submissions"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
