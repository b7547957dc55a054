"""One way to save and load every recospark model: Spark ML metadata (JSON) plus Parquet tables.

Never pickle: a saved model is readable by any Spark and safe to load. A model class opts in by
inheriting `TablesPersistence` and defining `_TABLES` (table name -> schema or None),
`_tables()`, `_extra_metadata()` and the classmethod `_from_saved(metadata, tables)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pyspark.ml.param import Params
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

from recospark.paths import join_path

FORMAT_VERSION = 1


class EstimatorPersistence(DefaultParamsWritable, MLReadable):
    """Mixin for estimators: params-only metadata, like MLlib's; loading checks the saved class,
    so `Estimator.load` on a model's folder fails instead of returning an empty estimator."""

    @classmethod
    def read(cls) -> MLReader:
        """A params-only reader that refuses a folder saved by another class."""
        return _CheckedParamsReader(cls)  # type: ignore[arg-type]


class _CheckedParamsReader(DefaultParamsReader):
    def load(self, path: str) -> Any:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        _check_class(metadata, self.cls, path)
        return super().load(path)


def _check_class(metadata: Mapping[str, Any], cls: type, path: str) -> None:
    expected = f"{cls.__module__}.{cls.__name__}"
    if metadata["class"] != expected:
        raise ValueError(f"{path} holds a {metadata['class']}, not a {expected}")


class TablesPersistence(Params, MLWritable, MLReadable):
    """Mixin: `write().save(path)` and `Model.load(path)`, like MLlib's models."""

    _TABLES: ClassVar[Mapping[str, StructType | None]] = {}

    def _tables(self) -> Mapping[str, DataFrame]:
        raise NotImplementedError

    def _extra_metadata(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_saved(cls, metadata: dict[str, Any], tables: Mapping[str, DataFrame]) -> Any:
        raise NotImplementedError

    def write(self) -> MLWriter:
        """A writer for Spark ML JSON metadata (with `formatVersion` and `_extra_metadata()`) plus one Parquet folder per table."""
        return _TablesWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        """A reader that refuses another class's folder or another format version, and reads each table with its declared schema."""
        return _TablesReader(cls)


class _TablesWriter(MLWriter):
    def __init__(self, instance: TablesPersistence) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        extra = {"formatVersion": FORMAT_VERSION, **self.instance._extra_metadata()}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, extraMetadata=extra)
        for name, table in self.instance._tables().items():
            table.write.mode("overwrite").parquet(join_path(path, name))


class _TablesReader(MLReader):
    def __init__(self, cls: type[TablesPersistence]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        _check_class(metadata, self.cls, path)
        if metadata.get("formatVersion") != FORMAT_VERSION:
            raise ValueError(f"{path}: model format {metadata.get('formatVersion')!r}, this code reads {FORMAT_VERSION}")
        tables = {}
        for name, schema in self.cls._TABLES.items():
            reader = self.sparkSession.read
            tables[name] = (reader.schema(schema) if schema is not None else reader).parquet(join_path(path, name))
        model = self.cls._from_saved(metadata, tables)
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
