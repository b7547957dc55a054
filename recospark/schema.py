"""Column names and StructTypes of every dataset recospark reads or writes.

Every other module refers to columns through these constants, so a rename is one edit
and a typo is an ImportError instead of a silent null column.
"""

from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# ratings/
USER_ID = "user_id"
MOVIE_ID = "movie_id"
RATING = "rating"
RATED_AT = "rated_at"

# movies/
TITLE = "title"
YEAR = "year"
GENRES = "genres"

# recommendations/<model>/
RANK = "rank"
SCORE = "score"

# model outputs (MLlib ALS names its output column "prediction")
PREDICTION = "prediction"

# factor tables (MLlib's ALSModel.userFactors/itemFactors use id + features)
FACTOR_ID = "id"
FEATURES = "features"
BIAS = "bias"

# rejected/
SOURCE_FILE = "source_file"
LINE_NUMBER = "line_number"
RAW = "raw"
REASON = "reason"

# split bookkeeping (validation rows carved out of train, cf. MLlib's validationIndicatorCol)
IS_VALIDATION = "is_validation"

# canonical/ (ml-100k's u1..u5, ua, ub files as ingested: which split, which side)
SPLIT_NAME = "split"
SIDE = "side"

RATINGS = StructType(
    [
        StructField(USER_ID, IntegerType(), nullable=False),
        StructField(MOVIE_ID, IntegerType(), nullable=False),
        StructField(RATING, DoubleType(), nullable=False),
        StructField(RATED_AT, TimestampType(), nullable=False),
    ]
)

MOVIES = StructType(
    [
        StructField(MOVIE_ID, IntegerType(), nullable=False),
        StructField(TITLE, StringType(), nullable=False),
        StructField(YEAR, IntegerType(), nullable=True),
        StructField(GENRES, ArrayType(StringType(), containsNull=False), nullable=False),
    ]
)

RECOMMENDATIONS = StructType(
    [
        StructField(USER_ID, IntegerType(), nullable=False),
        StructField(RANK, IntegerType(), nullable=False),
        StructField(MOVIE_ID, IntegerType(), nullable=False),
        StructField(SCORE, DoubleType(), nullable=False),
        StructField(TITLE, StringType(), nullable=True),
    ]
)

# What scoring produces before titles are attached (recospark.scoring.top_n).
TOP_N = StructType([f for f in RECOMMENDATIONS.fields if f.name != TITLE])

CANONICAL = StructType(
    [
        StructField(SPLIT_NAME, StringType(), nullable=False),
        StructField(SIDE, StringType(), nullable=False),
        *RATINGS.fields,
    ]
)

REJECTED = StructType(
    [
        StructField(SOURCE_FILE, StringType(), nullable=False),
        StructField(LINE_NUMBER, LongType(), nullable=False),
        StructField(RAW, StringType(), nullable=True),
        StructField(REASON, StringType(), nullable=False),
    ]
)

FACTORS = StructType(
    [
        StructField(FACTOR_ID, IntegerType(), nullable=False),
        StructField(FEATURES, ArrayType(FloatType(), containsNull=False), nullable=False),
    ]
)

BIASED_FACTORS = StructType([*FACTORS.fields, StructField(BIAS, FloatType(), nullable=False)])

# id lists (a scorer's candidate items, a neural model's user and item ids)
IDS = StructType([StructField(FACTOR_ID, IntegerType(), nullable=False)])

# movie_id -> dense column index of the item (PureSVD's and EASE's sparse user rows)
ITEM_INDEX_COL = "_item_index"
ITEM_INDEX = StructType([StructField(MOVIE_ID, IntegerType(), nullable=False), StructField(ITEM_INDEX_COL, IntegerType(), nullable=False)])
