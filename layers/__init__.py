"""Plain-torch building blocks shared by the model families: attention, feed-forward, timestep and position
embeddings. Module and parameter names follow diffusers, so released checkpoints load strictly into them.

Nothing here imports another package of the pack; import the submodule you need.
"""
