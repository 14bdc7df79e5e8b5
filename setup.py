"""real_jax: REAL (regression-aware RL) for LLM-as-a-judge in JAX/Flax."""
from setuptools import find_packages, setup

# Versions that install together on a fresh machine (the pins the tests run against).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "jinja2==3.1.6",  # chat templates; transformers only pulls it in through torch
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",  # plots of experiments and notebooks (PNG, headless Agg backend)
]

LIBTPU = "libtpu==0.0.42.1"  # the TPU compiler (what jax[tpu]==0.10.2 pins): plans without a TPU

WANDB = ["wandb==0.31.0"]

SERVE = ["fastapi==0.165.0", "uvicorn==0.55.0"]  # python -m real_jax.serve (pydantic comes along)

EXTRAS = {
    "tpu": [LIBTPU],
    "tensorboard": ["tensorboard==2.21.0"],  # the viewer: tensorboard --logdir WORKDIR/tb
    "wandb": WANDB,  # log.wandb.project: Weights & Biases logging (offline needs no account)
    "serve": SERVE,  # the batched scoring server over HTTP
    "test": [
        LIBTPU,  # tests/test_plan.py compiles for a TPU topology
        "pytest==9.2.0",
        "hypothesis==6.170.17",  # property-based tests of record validation and the parser
        "pytest-xdist==3.8.0",  # the suite runs on both cores (-n 2, one test file per worker)
        "torch==2.13.0",  # CPU wheel; reference implementation for parity tests only
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        *WANDB,  # tests/test_tracking.py runs the logger in offline mode
        *SERVE,  # tests/test_serve.py starts the server on localhost
    ],
}

setup(
    name="real_jax",
    version="0.1.0",
    description="Regression-aware reinforcement learning (REAL) for LLM-as-a-judge in JAX/Flax",
    packages=find_packages(include=["real_jax", "real_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
