from setuptools import find_packages, setup

version: dict = {}
with open('mmclip4clip/version.py') as f:
    exec(f.read(), version)

setup(
    name='mmclip4clip',
    version=version['__version__'],
    description='CLIP4Clip text-video retrieval as an OpenMMLab plugin for '
    'MMAction2',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmclip4clip', 'mmclip4clip.*']),
    python_requires='>=3.11',
    install_requires=[
        'torch>=2.6',
        'mmengine==0.10.7',
        'mmcv-lite==2.1.0',
        'mmaction2==1.2.0',
        'decord>=0.6.0',
        'numpy',
        'pillow',
        'transformers>=5.0',
        'tokenizers',
    ],
    extras_require={
        # PyAV writes the synthetic dataset's mp4 clips and re-encodes videos
        # (tools/data/compress_videos.py).
        'synthetic': ['av'],
        'video': ['av'],
        # Approximate search for large video indexes (tools/search.py).
        'search': ['faiss-cpu'],
        'tests': ['av', 'faiss-cpu', 'pytest', 'scikit-video', 'ruff'],
    },
)
