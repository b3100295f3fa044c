"""sppo-megatron: SPPO post-training on megatron-core with SGLang rollouts."""

from setuptools import find_packages, setup

setup(
    name="sppo-megatron",
    version="0.1.0",
    description="Self-Play Preference Optimization (SPPO) on megatron-core with colocated SGLang rollouts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sppo_megatron", "sppo_megatron.*"]),
    package_data={"sppo_megatron.config": ["*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16",
        "transformers>=4.51",
        "datasets",
        "omegaconf>=2.3",
        "safetensors",
        "pyarrow",
        "pandas",
        "numpy",
        # megatron-core's dist_checkpointing needs psutil but does not declare it
        # (without it the async writer of 0.16.1 hangs).
        "psutil",
        "math-verify>=0.7",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout", "matplotlib"],
        "plots": ["matplotlib"],
        # apex is built from source in docker/Dockerfile (no usable wheel on PyPI).
        # tensorboard: the GPU recipes log to it (trainer.logger=[console,tensorboard]).
        "gpu": ["transformer-engine[pytorch]>=2.3", "tensorboard"],
        "sglang": ["sglang==0.5.23"],
        "logging": ["tensorboard", "wandb"],
    },
    entry_points={
        "console_scripts": [
            "sppo-train=sppo_megatron.cli.train:main",
            "sppo-convert=sppo_megatron.cli.convert:main",
            "sppo-eval=sppo_megatron.cli.eval:main",
        ]
    },
)
