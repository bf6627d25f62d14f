"""Builds manual_ops._C from csrc/*.cpp with torch's C++ extension tooling."""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.cpp")))

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
            # torch is built with OpenMP; at::parallel_for is header-inlined, so we need it too.
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch==2.13.0", "numpy", "tqdm", "matplotlib", "scikit-learn"],
)
