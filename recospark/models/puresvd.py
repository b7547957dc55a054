"""PureSVD (Cremonesi, Koren, Turrin, RecSys 2010) as a pyspark.ml Estimator/Model shaped like ALS.

PureSVD treats every missing (user, item) cell as 0 and takes the rank-k truncated SVD of the
user x item matrix R ~ U S V^T. The top-N score of item i for user u is the projection of the
user's row onto the top-k item subspace, ``score(u, i) = r_u V V_i^T``. It is fitted for ranking,
not for rating prediction: the zeros are what teach it that unrated items rank low, which is
why it beats rating-fitted MF on top-N lists.

Distributed: rows of R (one sparse vector per user, over item indices) form a
`pyspark.mllib.linalg.distributed.RowMatrix`; ``computeSVD(k)`` finds V from the Gramian R^T R
(ARPACK with distributed matrix-vector products when the catalogue is large, a local
eigendecomposition of the n x n Gramian when n < 100), so U (users x k) is never formed. The
driver holds V (items x k) only. User factors ``r_u V`` are computed on the executors with V
broadcast, so

    userFactors: id int, features array<float>  = r_u V        (k values)
    itemFactors: id int, features array<float>  = V_i          (k values)

and their dot product is the PureSVD score: `recospark.scoring.top_n` serves it unchanged.
When R has fewer than k singular values above MLlib's ``rCond`` (1e-9 relative), the factors
have that smaller length.

Persistence is Spark ML JSON metadata (params, singular values) plus the two factor tables as
Parquet; no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, TypeConverters
from pyspark.mllib.linalg import Vectors
from pyspark.mllib.linalg.distributed import RowMatrix
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from recospark.frames import driver_frame, factor_table, index_table
from recospark.models.params import _RecommenderModelParams, _RecommenderModelSetters, _RecommenderParams, check_params, given, knob
from recospark.models.persistence import EstimatorPersistence, TablesPersistence
from recospark.schema import FACTOR_ID, FACTORS, FEATURES, ITEM_INDEX, ITEM_INDEX_COL, MOVIE_ID, PREDICTION, RATING, USER_ID

__all__ = ["PureSVD", "PureSVDModel"]

_USERS_TABLE = "userFactors"
_ITEMS_TABLE = "itemFactors"
_IDX = ITEM_INDEX_COL
_VALUE = "_value"
_UF, _IF = "_user_features", "_item_features"


class _PureSVDModelParams(_RecommenderModelParams):
    """What the fitted model needs to score rows: columns and coldStartStrategy (as ALSModel)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(userCol=USER_ID, itemCol=MOVIE_ID, predictionCol=PREDICTION, coldStartStrategy="nan")


class _PureSVDParams(_PureSVDModelParams, _RecommenderParams):
    """Fit-time params: rank and what a cell of R holds."""

    rank: Param[int] = knob("rank", "number of singular vectors kept", TypeConverters.toInt, ge=1)
    binary: Param[bool] = knob(
        "binary",
        "R holds 1 for every rated cell (true) or the rating itself (false); missing cells are 0 either way",
        TypeConverters.toBoolean,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(ratingCol=RATING, rank=10, binary=True)

    def getRank(self) -> int:
        return self.getOrDefault(self.rank)

    def getBinary(self) -> bool:
        return self.getOrDefault(self.binary)


class PureSVD(Estimator, _PureSVDParams, EstimatorPersistence):
    """PureSVD top-N recommender: truncated SVD of the (binary or rating) user x item matrix.

    Parameters
    ----------
    rank : int, default 10
        Number of singular vectors kept (`conf/ml100k-benchmark.yaml` lets `recospark tune`
        choose it on the validation carve).
    binary : bool, default True
        Cells of R are 1 for rated items (True) or the rating (False).
    userCol, itemCol, ratingCol, predictionCol, coldStartStrategy : str
        As in `pyspark.ml.recommendation.ALS`; ids must fit in an int.

    Examples
    --------
    >>> from recospark.models.puresvd import PureSVD
    >>> df = spark.createDataFrame(
    ...     [(1, 10, 5.0), (1, 20, 3.0), (2, 10, 4.0), (2, 30, 1.0), (3, 20, 2.0)],
    ...     ["user_id", "movie_id", "rating"])
    >>> model = PureSVD(rank=2).fit(df)
    >>> sorted(r.id for r in model.itemFactors.collect())
    [10, 20, 30]
    >>> row = model.transform(spark.createDataFrame([(1, 30)], ["user_id", "movie_id"])).first()
    >>> round(row.prediction, 4)
    0.1938
    """

    _input_kwargs: dict[str, Any]  # set by @keyword_only

    @keyword_only
    def __init__(
        self,
        *,
        rank: int | None = None,
        binary: bool | None = None,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
    ) -> None:
        super().__init__()
        self._set(**given(self._input_kwargs))

    @keyword_only
    def setParams(
        self,
        *,
        rank: int | None = None,
        binary: bool | None = None,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
    ) -> PureSVD:
        """Set the given Params (keyword only); an omitted keyword keeps its current value or default."""
        return self._set(**given(self._input_kwargs))

    def setRank(self, value: int) -> PureSVD:
        """Sets the value of :py:attr:`rank`."""
        return self._set(rank=value)

    def setBinary(self, value: bool) -> PureSVD:
        """Sets the value of :py:attr:`binary`."""
        return self._set(binary=value)

    def setUserCol(self, value: str) -> PureSVD:
        """Sets the value of :py:attr:`userCol`."""
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> PureSVD:
        """Sets the value of :py:attr:`itemCol`."""
        return self._set(itemCol=value)

    def setRatingCol(self, value: str) -> PureSVD:
        """Sets the value of :py:attr:`ratingCol`."""
        return self._set(ratingCol=value)

    def _fit(self, dataset: DataFrame) -> PureSVDModel:
        self._check_cold_start()
        problems = check_params(self)
        if problems:
            raise ValueError("PureSVD: " + "; ".join(problems))
        k = self.getRank()
        value = F.lit(1.0) if self.getBinary() else F.col(self.getRatingCol()).cast("double")
        cells = (
            dataset.select(
                F.col(self.getUserCol()).cast("int").alias(USER_ID),
                F.col(self.getItemCol()).cast("int").alias(MOVIE_ID),
                value.alias(_VALUE),
            )
            .dropna()
            # a repeated (user, item) counts once, as one cell of R (the last rating wins is not
            # knowable here, so the mean is used)
            .groupBy(USER_ID, MOVIE_ID)
            .agg(F.avg(_VALUE).alias(_VALUE))
        )
        # Column j of R = the j-th smallest item id; the ids travel to the driver once, as V's row labels.
        items = cells.select(MOVIE_ID).distinct().orderBy(MOVIE_ID)
        item_ids = np.array([r[0] for r in items.collect()], dtype=np.int32)
        n_items = len(item_ids)
        if n_items == 0:
            raise ValueError("cannot fit PureSVD on an empty dataset")
        if k > n_items:
            raise ValueError(f"rank {k} exceeds the number of items {n_items}")
        spark = dataset.sparkSession
        index = driver_frame(spark, index_table(item_ids), ITEM_INDEX)
        rows = (
            cells.join(F.broadcast(index), MOVIE_ID)
            .groupBy(USER_ID)
            .agg(F.array_sort(F.collect_list(F.struct(F.col(_IDX), F.col(_VALUE)))).alias("_cells"))
            .rdd.map(lambda r: (r[0], [c[0] for c in r[1]], [c[1] for c in r[1]]))
            .cache()
        )
        try:
            matrix = RowMatrix(rows.map(lambda r: Vectors.sparse(n_items, r[1], r[2])), numCols=n_items)
            svd = matrix.computeSVD(k, computeU=False)
            V = np.asarray(svd.V.toArray(), dtype=np.float64)  # n_items x k' (k' <= k)
            singular = [float(s) for s in svd.s.toArray()]
            v_bc = spark.sparkContext.broadcast(V)

            def user_factor(row):
                user, idx, vals = row
                vec = np.asarray(vals, dtype=np.float64) @ v_bc.value[np.asarray(idx, dtype=np.int64)]
                return user, [float(x) for x in vec.astype(np.float32)]

            users = spark.createDataFrame(rows.map(user_factor), FACTORS).cache()
            users.count()
            v_bc.unpersist()
        finally:
            rows.unpersist()
        items_df = driver_frame(spark, factor_table(item_ids, V), FACTORS)
        model = PureSVDModel(users, items_df, singular)
        return self._copyValues(model)


class PureSVDModel(Model, _PureSVDModelParams, _RecommenderModelSetters, TablesPersistence):
    """A fitted PureSVD: ``userFactors`` (r_u V) . ``itemFactors`` (V_i) is the ranking score.

    ``transform`` adds that score as ``predictionCol`` (float) for (user, item) rows, like
    ALSModel: NaN, or the row dropped with ``coldStartStrategy="drop"``, for a user or item not
    seen in fitting. ``singularValues`` are the kept singular values, largest first.
    """

    def __init__(
        self,
        userFactors: DataFrame | None = None,
        itemFactors: DataFrame | None = None,
        singularValues: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.userFactors = userFactors
        self.itemFactors = itemFactors
        self.singularValues = list(singularValues or [])

    @property
    def rank(self) -> int:
        """Length of the factors (the fitted rank, <= the requested one)."""
        return len(self.singularValues)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_cold_start()
        assert self.userFactors is not None and self.itemFactors is not None
        uid_col, iid_col = "_pu_id", "_pi_id"
        users = self.userFactors.select(F.col(FACTOR_ID).alias(uid_col), F.col(FEATURES).alias(_UF))
        items = self.itemFactors.select(F.col(FACTOR_ID).alias(iid_col), F.col(FEATURES).alias(_IF))
        joined = dataset.join(users, F.col(self.getUserCol()) == F.col(uid_col), "left").join(
            items, F.col(iid_col) == F.col(self.getItemCol()), "left"
        )
        dot = F.aggregate(
            F.zip_with(F.col(_UF), F.col(_IF), lambda a, b: a.cast("double") * b.cast("double")),
            F.lit(0.0),
            lambda acc, x: acc + x,
        )
        score = F.when(F.col(_UF).isNull() | F.col(_IF).isNull(), F.lit(float("nan"))).otherwise(dot)
        out = joined.withColumn(self.getPredictionCol(), score.cast("float"))
        if self.getColdStartStrategy() == "drop":
            out = out.filter(F.col(_UF).isNotNull() & F.col(_IF).isNotNull())
        return out.drop(uid_col, iid_col, _UF, _IF)

    _TABLES: ClassVar[Mapping[str, StructType | None]] = {_USERS_TABLE: FACTORS, _ITEMS_TABLE: FACTORS}

    def _tables(self) -> Mapping[str, DataFrame]:
        assert self.userFactors is not None and self.itemFactors is not None
        return {_USERS_TABLE: self.userFactors, _ITEMS_TABLE: self.itemFactors}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"singularValues": self.singularValues}

    @classmethod
    def _from_saved(cls, metadata: dict[str, Any], tables: Mapping[str, DataFrame]) -> PureSVDModel:
        return cls(tables[_USERS_TABLE], tables[_ITEMS_TABLE], metadata.get("singularValues"))
