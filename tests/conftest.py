import torch

# The demo model's stand-in files and fixtures, for every test module.
pytest_plugins = ["demo_support"]

# One intra-op thread: the tiny models are overhead-bound, and on a shared 2-core
# machine a second spinning thread slows every op by an order of magnitude.
torch.set_num_threads(1)
