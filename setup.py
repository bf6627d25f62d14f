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


def _files(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


SOURCES = _files("csrc/*.cpp")
# The vectorised loops (csrc/cpu/*.cpp) are compiled once per CPU capability, as ATen's
# cmake/Codegen.cmake compiles its native/cpu kernels: each copy gets -DCPU_CAPABILITY=<name>, which
# names its namespace (at::vec's too), -DCPU_CAPABILITY_<name>, which picks at::vec's implementation,
# and the -m flags of that instruction set. csrc/cpu_capability.cpp picks one copy at run time.
KERNEL_SOURCES = _files("csrc/cpu/*.cpp")
# at::vec's headers carry `#pragma unroll`, which gcc does not know and would warn about in every copy.
KERNEL_FLAGS = ["-Wno-unknown-pragmas"]
CAPABILITY_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    # gcc 12 warns inside at::vec's 512-bit code: its _mm512_undefined_* intrinsics initialise a
    # register from itself (a false positive, gcc bug 105593). The same sources compiled for DEFAULT
    # and AVX2 keep the warnings for our own code.
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-Wno-uninitialized", "-Wno-maybe-uninitialized"],
}


class BuildExtensionPerCapability(BuildExtension):
    """BuildExtension that first compiles KERNEL_SOURCES once per capability, each copy into its own
    folder, and links those objects after the extension's own, in order of increasing capability. An
    inline function that several objects emit is kept, by the linker, from the first object that has
    it; so the copy linked is always one compiled for the lowest capability that uses it, never code
    that needs instructions its callers were not compiled to assume."""

    def build_extension(self, ext):
        ext.extra_objects = []
        for capability, flags in CAPABILITY_FLAGS.items():
            macros = [*ext.define_macros, ("CPU_CAPABILITY", capability), (f"CPU_CAPABILITY_{capability}", None)]
            ext.extra_objects += self.compiler.compile(
                KERNEL_SOURCES, output_dir=os.path.join(self.build_temp, capability), macros=macros,
                include_dirs=ext.include_dirs, extra_postargs=ext.extra_compile_args + KERNEL_FLAGS + flags, depends=ext.depends)
        super().build_extension(ext)


# The oldest torch whose APIs we use: torch.library.register_fake / register_autograd / opcheck and
# the device-generic autocast API (torch.is_autocast_enabled(device_type),
# torch.amp.is_autocast_available) arrived in 2.4. No upper bound: none is known to break.
TORCH_REQUIREMENT = "torch>=2.4"
TRAIN_EXTRAS = ["numpy", "tqdm", "matplotlib", "scikit-learn"]
# expecttest: torch.testing._internal (tests/test_opinfo.py runs torch's OpInfo and ModuleInfo inputs) imports it
TEST_EXTRAS = TRAIN_EXTRAS + ["pytest", "hypothesis", "expecttest", "nbclient", "nbformat", "ipykernel"]

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
            # Rebuild when a kernel file or a header changes, not only one of SOURCES.
            depends=KERNEL_SOURCES + _files("csrc/*.h") + _files("csrc/cpu/*.h"),
            # Stringified in registration.cpp; import manual_ops compares it with torch.__version__.
            define_macros=[("MANUAL_OPS_BUILT_WITH_TORCH", torch.__version__)],
            # torch is built with OpenMP; at::parallel_for is header-inlined, so we need it too.
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtensionPerCapability},
    python_requires=">=3.10",
    install_requires=[TORCH_REQUIREMENT],
    extras_require={"train": TRAIN_EXTRAS, "test": TEST_EXTRAS},
)
