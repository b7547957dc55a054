import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, FloatType, IntegerType, StructField, StructType

from recospark.models.baselines import BiasBaseline, BiasBaselineModel, GlobalMean, GlobalMeanModel
from recospark.models.table import MODELS
from recospark.schema import BIAS, FACTOR_ID, MOVIE_ID, PREDICTION, RATING, TOP_N, USER_ID
from recospark.scoring import scoring_factors, top_n

TRAIN = StructType([StructField(USER_ID, IntegerType()), StructField(MOVIE_ID, IntegerType()), StructField(RATING, DoubleType())])
PAIRS = StructType([StructField(USER_ID, IntegerType()), StructField(MOVIE_ID, IntegerType())])
PREDICTED = StructType([*PAIRS.fields, StructField(PREDICTION, FloatType())])
BIASES = StructType([StructField(FACTOR_ID, IntegerType()), StructField(BIAS, FloatType())])

# mu = (5 + 3 + 4 + 1) / 4 = 3.25 (the null rating is not a rating)
MU = 3.25
# regItem = 2: b_i = sum(r - mu) / (2 + n_i)
B_ITEM = {10: (1.75 + 0.75) / (2 + 2), 11: -0.25 / (2 + 1), 12: -2.25 / (2 + 1)}  # 0.625, -0.08333, -0.75
# regUser = 1: b_u = sum(r - mu - b_i) / (1 + n_u)
B_USER = {
    1: ((5 - MU - B_ITEM[10]) + (3 - MU - B_ITEM[11])) / (1 + 2),  # 0.31944
    2: (4 - MU - B_ITEM[10]) / (1 + 1),  # 0.0625
    3: (1 - MU - B_ITEM[12]) / (1 + 1),  # -0.75
}


@pytest.fixture(scope="module")
def train(spark):
    return spark.createDataFrame([(1, 10, 5.0), (1, 11, 3.0), (2, 10, 4.0), (3, 12, 1.0), (4, 10, None)], TRAIN)


@pytest.fixture(scope="module")
def bias_model(train):
    return BiasBaseline(regUser=1.0, regItem=2.0).fit(train)


def test_bias_baseline_matches_closed_form_biases(spark, bias_model):
    assert bias_model.mean == pytest.approx(MU)
    assert_approx_df_equality(
        bias_model.itemBiases, spark.createDataFrame(list(B_ITEM.items()), BIASES), 1e-6, ignore_row_order=True, ignore_nullable=True
    )
    assert_approx_df_equality(
        bias_model.userBiases, spark.createDataFrame(list(B_USER.items()), BIASES), 1e-6, ignore_row_order=True, ignore_nullable=True
    )


def test_bias_baseline_predicts_every_row_including_cold_ones(spark, bias_model):
    test = spark.createDataFrame([(1, 12), (9, 10), (2, 99), (9, 99), (None, 11)], PAIRS)
    expected = spark.createDataFrame(
        [
            (1, 12, MU + B_USER[1] + B_ITEM[12]),  # 2.81944
            (9, 10, MU + B_ITEM[10]),  # unseen user: mu + b_i
            (2, 99, MU + B_USER[2]),  # unseen item: mu + b_u
            (9, 99, MU),  # both unseen
            (None, 11, MU + B_ITEM[11]),  # null id behaves as unseen
        ],
        PREDICTED,
    )
    for strategy in ("nan", "drop"):  # documented: nothing is dropped by a baseline
        got = bias_model.copy({bias_model.coldStartStrategy: strategy}).transform(test)
        assert_approx_df_equality(got, expected, 1e-5, ignore_row_order=True, ignore_nullable=True)


def test_bias_scoring_factors_score_is_the_prediction(spark, bias_model):
    users, items = scoring_factors(bias_model)
    recs = top_n(users, items, None, n=3)
    preds = bias_model.transform(recs.select(USER_ID, MOVIE_ID))
    diff = recs.join(preds, [USER_ID, MOVIE_ID]).select(F.max(F.abs(F.col("score") - F.col(PREDICTION)))).first()[0]
    assert diff < 1e-5
    # within a user the order is by item bias: 10 (0.625) > 11 (-0.083) > 12 (-0.75)
    assert [r[MOVIE_ID] for r in recs.filter(F.col(USER_ID) == 3).orderBy("rank").collect()] == [10, 11, 12]


def test_global_mean_predicts_mean_and_ranks_by_popularity(spark, train):
    model = GlobalMean().fit(train)
    test = spark.createDataFrame([(1, 12), (9, 99)], PAIRS)
    expected = spark.createDataFrame([(1, 12, MU), (9, 99, MU)], PREDICTED)
    assert_df_equality(model.transform(test), expected, ignore_row_order=True, ignore_nullable=True)
    users, items = scoring_factors(model)
    rated = train.select(USER_ID, MOVIE_ID)
    recs = top_n(users, items, rated, n=2)
    # train counts: 10 -> 2 (the null-rating row is not counted), 11 -> 1, 12 -> 1; ties to the smaller id
    expected_recs = spark.createDataFrame([(1, 1, 12, 1.0), (2, 1, 11, 1.0), (2, 2, 12, 1.0), (3, 1, 10, 2.0), (3, 2, 11, 1.0)], TOP_N)
    assert_df_equality(recs, expected_recs, ignore_row_order=True)


@pytest.mark.parametrize("name", ["bias", pytest.param("global_mean", marks=pytest.mark.slow)])
def test_save_load_roundtrip_through_the_model_table(spark, cfg_factory, tmp_path, train, name):
    cfg = cfg_factory("bias.reg_user=1.0", "bias.reg_item=2.0")
    model = MODELS[name].build(cfg).fit(train)
    path = str(tmp_path / name)
    model.write().save(path)
    model.write().overwrite().save(path)  # a second save over the first
    loaded = MODELS[name].load(path)
    assert isinstance(loaded, BiasBaselineModel if name == "bias" else GlobalMeanModel)
    assert loaded.uid == model.uid
    assert loaded.extractParamMap() == {loaded.getParam(p.name): v for p, v in model.extractParamMap().items()}
    test = spark.createDataFrame([(1, 12), (9, 10), (2, 99)], PAIRS)
    assert_df_equality(loaded.transform(test), model.transform(test), ignore_row_order=True)
    for a, b in zip(scoring_factors(loaded), scoring_factors(model)):
        assert_df_equality(a, b, ignore_row_order=True, ignore_nullable=True)


def test_estimators_save_their_params(tmp_path):
    est = BiasBaseline(regUser=3.0, regItem=4.0, coldStartStrategy="drop")
    est.write().overwrite().save(str(tmp_path / "est"))
    back = BiasBaseline.load(str(tmp_path / "est"))
    assert (back.getRegUser(), back.getRegItem(), back.getColdStartStrategy()) == (3.0, 4.0, "drop")


def test_loading_the_wrong_class_fails_with_the_path(tmp_path, train):
    path = str(tmp_path / "gm")
    GlobalMean().fit(train).write().save(path)
    with pytest.raises(ValueError, match="GlobalMeanModel"):
        BiasBaselineModel.load(path)


def test_invalid_params_are_rejected(train):
    with pytest.raises(ValueError, match="coldStartStrategy"):
        GlobalMean(coldStartStrategy="skip").fit(train)
    with pytest.raises(ValueError, match="regUser"):
        BiasBaseline(regUser=-1.0).fit(train)
