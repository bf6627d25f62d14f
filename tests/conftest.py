import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=30, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
