"""Running a model on images the way validation, predict and submissions do: the float32 or autocast forward
(forward), upscaling an image of any size in exact tiles with optional self-ensemble (tiles), and predicting a
loader's images sharded over the ranks (sharded).

It sits above the model and data packages and below scoring and the commands: training validates through it and
predict upscales through it, so both produce the same pixels.
"""
