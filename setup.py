"""Builds manual_ops._C from csrc/*.cpp with torch's C++ extension tooling.

The extension is compiled against the torch that is installed when it is built (install with
``pip install --no-build-isolation .`` into the environment that will run it); that torch's
version is compiled into the library, and ``import manual_ops`` refuses to load it under any other.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.cpp")))

# The oldest torch whose APIs we use: torch.library.register_fake / register_autograd / opcheck and
# the device-generic autocast API (torch.is_autocast_enabled(device_type),
# torch.amp.is_autocast_available) arrived in 2.4. No upper bound: none is known to break.
TORCH_REQUIREMENT = "torch>=2.4"
TRAIN_EXTRAS = ["numpy", "tqdm", "matplotlib", "scikit-learn"]
TEST_EXTRAS = TRAIN_EXTRAS + ["pytest", "hypothesis", "nbclient", "nbformat", "ipykernel"]

setup(
    name="manual_ops",
    version="0.1.0",
    description="Conv, batch-norm and pooling layers for PyTorch with hand-written backward passes",
    packages=find_packages(include=["manual_ops", "manual_ops.*"]),
    ext_modules=[
        CppExtension(
            "manual_ops._C",
            SOURCES,
            include_dirs=[os.path.join(HERE, "csrc")],
            # Stringified in registration.cpp; import manual_ops compares it with torch.__version__.
            define_macros=[("MANUAL_OPS_BUILT_WITH_TORCH", torch.__version__)],
            # torch is built with OpenMP; at::parallel_for is header-inlined, so we need it too.
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=[TORCH_REQUIREMENT],
    extras_require={"train": TRAIN_EXTRAS, "test": TEST_EXTRAS},
)
