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
    # The search page's HTML, script and style (tools/search_server.py).
    package_data={'mmclip4clip.apis': ['web_static/*']},
    python_requires='>=3.11',
    install_requires=[
        'torch>=2.6',
        'mmengine==0.10.7',
        'mmcv-lite==2.1.0',
        'mmaction2==1.2.0',
        # PyAV decodes videos in the data pipeline (AVInit / AVDecode), writes
        # the synthetic clips and re-encodes videos; decord backs mmaction2's
        # DecordInit for configs that choose it. Pinned to one release: the
        # x264 bundled in its wheels decides the synthetic clips' bytes, and
        # with them the quick start's figures.
        'av==18.1.*',
        'decord>=0.6.0',
        'numpy',
        'pillow',
        'transformers>=5,<6',  # the backbone reads its CLIP layers' internals
        'tokenizers',
        # Exact search runs its matrix-vector product on one BLAS thread
        # (apis/index.py exact_scores).
        'threadpoolctl',
    ],
    extras_require={
        # Approximate search for large video indexes (tools/search.py).
        'search': ['faiss-cpu'],
        # The search page (tools/search_server.py): FastAPI for the routes,
        # uvicorn to serve them.
        'web': ['fastapi', 'uvicorn'],
        # playwright drives the system's Chromium in the search page's
        # browser test (.ci/run installs Debian's chromium; Playwright's own
        # browser download is never used).
        'tests': ['faiss-cpu', 'pytest', 'scikit-video', 'ruff', 'fastapi',
                  'uvicorn', 'httpx', 'playwright'],
    },
)
