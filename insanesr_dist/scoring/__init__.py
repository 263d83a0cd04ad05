"""The competition's score and what is checked against it: grader-exact PSNR/SSIM/JM (metrics), training's
in-loop validation and submission writing (validation), and the submission CSV format and its checker
(submission, with the `check-submission` command).

It uses inference to predict and knows nothing of the training loop, so evaluate, predict and training score
alike.
"""
