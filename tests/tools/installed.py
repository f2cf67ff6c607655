"""Exit 0 when the environment of the Python running this has dl2 installed from this checkout (editable), at
settings.ini's version, with its requirements met (and the dev tools' too with --dev): then tests/setup.sh has nothing
to install. `python tests/tools/installed.py [--dev]`."""
import configparser, json, sys, sysconfig
from importlib.metadata import distributions, version, PackageNotFoundError
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname
from packaging.requirements import Requirement   # a dl2 requirement's requirement: without it, dl2 is not installed either

ROOT = Path(__file__).resolve().parents[2]

def requirements(cfg, dev):
    "settings.ini's requirements, with the test and dev tools' when `dev`."
    return cfg['requirements'].split() + ((cfg['test_requirements'] + ' ' + cfg['dev_requirements']).split() if dev else [])

def met(req):
    "Whether an installed release satisfies requirement `req`."
    try: return req.specifier.contains(version(req.name), prereleases=True)
    except PackageNotFoundError: return False

def installed_here(dev=False):
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini'); cfg = cfg['DEFAULT']
    # only the environment's own site-packages: a source tree on PYTHONPATH can hold an .egg-info of the same name
    site = list({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')})
    dist = next(iter(distributions(name=cfg['lib_name'], path=site)), None)
    if dist is None or dist.version != cfg['version']: return False
    url = json.loads(dist.read_text('direct_url.json') or '{}')   # PEP 610: what pip installed it from
    if not url.get('dir_info', {}).get('editable') or Path(url2pathname(urlparse(url['url']).path)).resolve() != ROOT: return False
    return all(met(Requirement(r)) for r in requirements(cfg, dev))

if __name__ == '__main__': sys.exit(0 if installed_here('--dev' in sys.argv[1:]) else 1)
