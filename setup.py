"""metarl_jax: cross-episode meta-RL (ORBIT) in JAX/Flax. Install with ``pip install -e ".[dev]"``."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "gymnax==1.0.1",
    "six>=1.16",  # gymnax imports it but does not declare it
    "ml-collections==1.1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "transformers>=5.0,<6",  # tokenizer and config only
    "tokenizers>=0.22",
    "jinja2>=3.1",  # transformers' apply_chat_template (the chat format) needs it and does not declare it
    "safetensors>=0.5",
    "tqdm>=4.66",
    "tensorboardX>=2.6.5,<3",  # the TensorBoard event files of metarl_jax.metrics_log (tested: 2.6.5)
]

EXTRAS = {
    # matplotlib: the experiments' plots; nbclient, nbformat, ipykernel: tests/test_notebook.py runs the quickstart.
    # scipy: the experiments' intervals over seeds (jax installs it too). tensorboard: the tests read the event files.
    # pytest-xdist: the default suite runs on two workers (`-n 2`; tested: 3.8.0).
    "dev": ["pytest>=8", "pytest-xdist>=3.6,<4", "hypothesis>=6.100", "matplotlib>=3.8", "scipy>=1.11", "nbclient>=0.10", "nbformat>=5.10",
            "ipykernel>=6.29", "tensorboard>=2.21,<3"],  # tensorboard tested: 2.21.0
    # The rule-conformance tests and the throughput benchmark's peer (GEM's Python games).
    "peer": ["gem-llm==0.1.0"],
    # Parity tests of the model family against transformers' PyTorch models (a later issue).
    "torch": ["torch==2.13.0"],
    # Optional Weights & Biases mirror of the metrics (config.wandb.project); tested: 0.31.0.
    "wandb": ["wandb>=0.31,<1"],
}

setup(
    name="metarl_jax",
    version="0.1.0",
    description="Cross-episode meta-reinforcement learning (ORBIT) for in-context learners, in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["metarl_jax", "metarl_jax.*"]),
    package_data={"metarl_jax": ["envs/data/*.txt", "text/data/*.txt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
