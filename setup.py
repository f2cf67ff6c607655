"""Packaging for dl2: every field comes from settings.ini, the project's single source of metadata."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}   # SPDX identifiers: setuptools deprecates the License classifiers
statuses = {'1': 'Planning', '2': 'Pre-Alpha', '3': 'Alpha', '4': 'Beta', '5': 'Production/Stable', '6': 'Mature', '7': 'Inactive'}
lic = licenses[cfg['license']]
min_python = cfg['min_python']
py_versions = ['3.10', '3.11', '3.12', '3.13', '3.14']   # CI tests the first and the last
readme = Path(__file__).parent/'README.md'
docs = cfg['doc_host'] + cfg['doc_baseurl']
pkg = cfg['lib_path']   # the import name; cfg['lib_name'] is the distribution's
tests = cfg['test_requirements'].split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    license=lic,
    author=cfg['author'],
    url=docs,
    project_urls={'Documentation': docs, 'Source': cfg['git_url'], 'Issues': cfg['git_url'] + '/issues'},
    keywords=cfg['keywords'].split(),
    classifiers=[f"Development Status :: {cfg['status']} - {statuses[cfg['status']]}",
                 f"Intended Audience :: {cfg['audience']}",
                 f"Natural Language :: {cfg['language']}",
                 'Operating System :: OS Independent']
                + [f'Programming Language :: Python :: {v}' for v in py_versions[py_versions.index(min_python):]],
    # namespace discovery, so that dl2/fast/csrc (the C++ kernels' sources, built on the user's machine) is a package of data files
    packages=setuptools.find_namespace_packages(include=[pkg, pkg+'.*'], exclude=['*.__pycache__']),
    package_data={pkg+'.fast.csrc': ['*.cpp', '*.h']},
    python_requires=f'>={min_python}',
    install_requires=cfg['requirements'].split(),
    # `test`: what pytest needs beside dl2; `dev`: that and the notebook toolchain
    extras_require={'test': tests, 'dev': cfg['dev_requirements'].split() + tests},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{pkg}={pkg}._modidx:d"]},
    zip_safe=False,
)
