"""jaxbud: structured pruning research (Fisher pruning, reduced networks) in JAX."""
import setuptools

EXPORT = ['onnx>=1.16,<2', 'onnxruntime>=1.18,<2']
JAX = '>=0.10,<0.12'  # 0.10.2 (Python 3.11) and 0.11.2 (Python 3.12) tested

setuptools.setup(
    name='jaxbud',
    version='0.1.0',
    description='JAX reference implementation of "Pruning neural networks: is it time to nip '
                'it in the bud?" (Crowley et al.)',
    packages=setuptools.find_packages(include=['jaxbud', 'jaxbud.*']),
    python_requires='>=3.11',
    install_requires=[
        f'jax{JAX}',
        'flax>=0.12,<0.13',
        'optax>=0.2.5,<0.3',
        'orbax-checkpoint>=0.11,<0.13',
        'tensorflow-datasets>=4.9.8,<5',
        # Streaming ImageNet input (jaxbud.data.stream); needs no TensorFlow. 0.2.15 added
        # DatasetIterator.close, which stops the decoding processes.
        'grain>=0.2.15,<0.3',
        'absl-py>=2.1',
        'ml_collections>=1.0',
        'numpy>=1.26',
        'scikit-learn>=1.4',
        'scipy>=1.11',  # t quantiles of the study's intervals (jaxbud.stats)
        'matplotlib>=3.8',
        'tensorboardX>=2.6',
    ],
    extras_require={
        # Accelerator builds of the same jax (jax's own extras, within jaxbud's pin): NVIDIA
        # GPUs with a CUDA 12 or 13 driver, TPU VMs. tests/test_install.py resolves them.
        'cuda12': [f'jax[cuda12]{JAX}'],
        'cuda13': [f'jax[cuda13]{JAX}'],
        'tpu': [f'jax[tpu]{JAX}'],
        # launch.export's ONNX model and bench.runtime=onnxruntime (docs/export.md). The
        # StableHLO artifact (jaxbud.export.stablehlo) and jaxbud.load need only the core.
        'export': EXPORT,
        # tfds' builders read the original CIFAR/ImageNet archives through TensorFlow.
        # (and tfds imports importlib_resources when preparing without declaring it).
        'data': ['tensorflow-cpu>=2.16,<3', 'pillow>=10', 'importlib_resources'],
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'tensorflow-cpu>=2.16,<3', 'pillow>=10',
                 'importlib_resources',
                 *EXPORT],
    },
)
