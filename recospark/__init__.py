"""recospark: a PySpark batch recommender pipeline (MovieLens -> splits -> ALS and DSGD -> top-N)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recospark")
except PackageNotFoundError:  # running from a source tree or a --py-files zip
    __version__ = "0.1.0"
