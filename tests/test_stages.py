"""Stage contracts on the shared published run (tests/conftest.py `published`): data flows one way,
lineage names exact versions, checkpoints are cleaned, files match their manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.ml.base import Estimator
from pyspark.sql import functions as F

from recospark import fs, io, scoring
from recospark.config import load_config
from recospark.errors import PrerequisiteError
from recospark.schema import MOVIE_ID, MOVIES, RANK, RATINGS, RECOMMENDATIONS, TITLE, USER_ID
from recospark.stages import evaluate, pipeline, report

# every test reads the session-wide `published` pipeline run (about 30 s to build): `make test` runs them, `make check` does not
pytestmark = pytest.mark.slow


@pytest.mark.slow
def test_report_and_evaluate_read_only_published_outputs(spark, published, monkeypatch):
    """With fitting and ranking code made unavailable, evaluate and report still run on the
    published outputs and give the same metrics."""
    cfg, result = published

    def unavailable(*_args, **_kwargs):
        raise AssertionError("a downstream stage tried to fit or rank")

    monkeypatch.setattr(Estimator, "fit", unavailable)
    monkeypatch.setattr(scoring, "top_n", unavailable)
    monkeypatch.setattr(scoring, "top_n_block", unavailable)
    again = evaluate.run(spark, cfg)
    assert again["table"] == result["stages"]["evaluate"]["table"]
    rendered = report.run(spark, cfg)
    assert all(state == "ok" for state in rendered["sections"].values()), rendered["sections"]


def test_evaluate_scores_exactly_the_published_lists(spark, published):
    """Precision@k recomputed by hand from recommendations/ equals the published metric."""
    cfg, _ = published
    k = cfg.evaluate.k
    recs = io.read_output(spark, cfg, "recommendations/bias", RECOMMENDATIONS).filter(F.col(RANK) <= k)
    test = io.read_output(spark, cfg, "splits/random/test", RATINGS).filter(F.col("rating") >= cfg.evaluate.relevance_threshold)
    hits = recs.join(test.select(USER_ID, MOVIE_ID), [USER_ID, MOVIE_ID]).groupBy(USER_ID).count()
    users = test.select(USER_ID).distinct().join(hits, USER_ID, "left").fillna(0)
    expected = users.agg(F.avg(F.col("count") / k)).first()[0]
    metrics = io.read_json(io.output_path(cfg, "metrics", "bias.json"))
    assert metrics[f"precision@{k}"] == pytest.approx(expected, abs=1e-12)


def test_ranking_models_have_no_rating_metrics(published):
    cfg, _ = published
    summary = io.read_json(io.output_path(cfg, "metrics", "summary.json"))
    implicit = summary["models"]["als_implicit"]
    assert implicit["objective"] == "ranking" and implicit["rmse"] is None and implicit["ndcg@5"] is not None
    assert summary["models"]["als"]["rmse"] > 0


def test_manifests_name_exact_versions_as_absolute_uris(published):
    cfg, _ = published
    root = Path(cfg.output.root)
    for relpath in ("splits/random/train", "models/sgd", "recommendations/als", "metrics", "report"):
        manifest = io.read_manifest(cfg, relpath)
        assert manifest["inputs"], relpath
        for uri in manifest["inputs"]:
            assert uri.startswith("file:///"), (relpath, uri)
            path = Path(uri[len("file://") :])
            assert "/_versions/" in uri and path.is_dir() and not path.is_symlink(), (relpath, uri)
    train = io.read_manifest(cfg, "models/sgd")["inputs"]
    assert train == [(root / "splits/random/train").resolve().as_uri()]
    metrics = io.read_manifest(cfg, "metrics")
    assert sorted(metrics["files"]) == sorted([f"{m}.json" for m in cfg.train.models] + ["summary.json"])


def test_every_output_has_a_manifest_and_no_checkpoint_is_left(published):
    cfg, _ = published
    root = Path(cfg.output.root)
    outputs = ["ratings", "movies", "rejected", "splits/random/train", "splits/random/test", "metrics", "report"]
    outputs += [f"{kind}/{m}" for kind in ("models", "recommendations") for m in cfg.train.models]
    for relpath in outputs:
        assert (root / relpath / fs.MANIFEST).is_file(), relpath
    leftovers = [p for p in (root / "_checkpoints").rglob("*") if p.is_file()] if (root / "_checkpoints").exists() else []
    assert leftovers == []


def test_parquet_files_match_their_manifests(published):
    """Timestamps are TIMESTAMP_MICROS (not INT96) and the manifest's nullability is the files' own."""
    cfg, _ = published
    for relpath in ("ratings", "recommendations/sgd"):
        folder = Path(io.source(cfg, relpath).uri[len("file://") :])
        part = next(folder.glob("part-*.parquet"))
        schema = pq.read_schema(part)
        manifest = io.read_manifest(cfg, relpath)
        fields = {f["name"]: f for f in manifest["schema"]["fields"]}
        assert set(fields) == set(schema.names)
        for field in schema:
            assert field.nullable == fields[field.name]["nullable"], (relpath, field.name)
        if relpath == "ratings":
            assert str(schema.field("rated_at").type) == "timestamp[us, tz=UTC]"
            physical = pq.ParquetFile(part).schema.column(schema.names.index("rated_at")).physical_type
            assert physical == "INT64"


def test_only_catalogued_movies_are_recommended(spark, published):
    """Movie 25 has ratings but no u.item row: it is never recommended and the manifest counts it."""
    cfg, _ = published
    for name in cfg.train.models:
        recs = io.read_output(spark, cfg, f"recommendations/{name}", RECOMMENDATIONS)
        assert recs.filter(F.col(TITLE).isNull() | (F.col(MOVIE_ID) == 25)).count() == 0, name
        catalogue = {r[0] for r in io.read_output(spark, cfg, "movies", MOVIES).select(MOVIE_ID).collect()}
        assert {r[0] for r in recs.select(MOVIE_ID).distinct().collect()} <= catalogue
    manifest = io.read_manifest(cfg, "recommendations/bias")
    assert manifest["uncatalogued_items_excluded"] == 1


def test_every_train_user_gets_n_recommendations_from_every_model(spark, published):
    cfg, _ = published
    train_users = io.read_output(spark, cfg, "splits/random/train", RATINGS).select(USER_ID).distinct().count()
    for name in cfg.train.models:
        recs = io.read_output(spark, cfg, f"recommendations/{name}", RECOMMENDATIONS)
        per_user = recs.groupBy(USER_ID).agg(F.count(F.lit(1)).alias("n"), F.max(RANK).alias("top"))
        assert per_user.count() == train_users, name
        assert per_user.filter((F.col("n") != cfg.recommend.n) | (F.col("top") != cfg.recommend.n)).count() == 0, name
        assert io.read_manifest(cfg, f"recommendations/{name}")["users"] == train_users, name
        # each file holds whole lists, ordered by (user_id, rank)
        folder = Path(io.source(cfg, f"recommendations/{name}").uri[len("file://") :])
        seen: set[int] = set()
        for part in sorted(folder.glob("part-*.parquet")):
            table = pq.read_table(part, columns=[USER_ID, RANK])
            keys = list(zip(table.column(USER_ID).to_pylist(), table.column(RANK).to_pylist(), strict=True))
            assert keys == sorted(keys), (name, part.name)
            users = {u for u, _ in keys}
            assert not users & seen, (name, part.name)
            seen |= users


def test_sgd_is_refit_on_all_of_train_and_covers_every_user_and_item(published):
    cfg, _ = published
    manifest = io.read_manifest(cfg, "models/sgd")
    assert 1 <= manifest["refit_epochs"] <= cfg.sgd.max_iter
    assert [h["epoch"] for h in manifest["history"]][: manifest["refit_epochs"]] == list(range(1, manifest["refit_epochs"] + 1))
    covered = manifest["coverage"]
    assert covered["users"] == covered["train_users"] and covered["items"] == covered["train_items"]


def test_als_learning_curve_is_recorded_by_train(published):
    cfg, _ = published
    history = io.read_manifest(cfg, "models/als")["history"]
    assert [h["epoch"] for h in history] == [1, cfg.als.max_iter]
    assert all(h["train_rmse"] > 0 and h["val_rmse"] > 0 for h in history)


def test_preflight_names_the_stage_to_run_first(tmp_path):
    """Before any Spark: `recommend` on an empty root, `evaluate` after split but before train."""
    cfg = load_config(None, [f"output.root={tmp_path / 'out'}"])
    with pytest.raises(PrerequisiteError, match=r"recommend needs splits/random/train.*run `recospark split` first"):
        pipeline.preflight(cfg, ["recommend"])
    for side in ("train", "test"):  # a published split, as `split` leaves it
        (tmp_path / "out" / "splits" / "random" / side).mkdir(parents=True)
        (tmp_path / "out" / "splits" / "random" / side / fs.MANIFEST).write_text("{}")
    with pytest.raises(PrerequisiteError, match=r"evaluate needs models/als.*run `recospark train` first"):
        pipeline.preflight(cfg, ["evaluate"])


def test_preflight_accepts_what_earlier_stages_of_the_run_publish(tiny_movielens, tmp_path):
    cfg = load_config(None, [f"output.root={tmp_path / 'out'}", f"data.source={tiny_movielens}"])
    pipeline.preflight(cfg, ["ingest", "split", "train", "recommend", "evaluate", "report"])
    with pytest.raises(PrerequisiteError, match=r"train needs splits/random/train"):
        pipeline.preflight(cfg, ["ingest", "train"])


def test_summary_json_is_valid_and_complete(published):
    cfg, _ = published
    summary = json.loads((Path(cfg.output.root) / "metrics" / "summary.json").read_text())
    assert set(summary["models"]) == set(cfg.train.models)
    assert all(summary["models"][m]["model"] == m for m in cfg.train.models)


def test_blend_loads_its_published_components_instead_of_refitting(spark, published, tmp_path, monkeypatch):
    """Airflow trains each model in its own task: the blend task then loads the components
    published from the same split version (with the same tuned params) and fits none of them.
    (With train.validation the blend's validation fit refits its components on the carve: the
    published ones have seen the carve's rows. That is switched off here.)"""
    import shutil

    from pyspark.ml.recommendation import ALS

    from recospark.models.baselines import GlobalMean
    from recospark.stages import train

    cfg, _ = published
    root = tmp_path / "out"
    shutil.copytree(cfg.output.root, root, symlinks=True)

    def refit(*_args, **_kwargs):
        raise AssertionError("a published component was fitted again")

    monkeypatch.setattr(ALS, "_fit", refit)
    monkeypatch.setattr(GlobalMean, "_fit", refit)
    blend_cfg = cfg.with_overrides(
        {
            "output.root": str(root),
            "train.models": ["blend"],
            "train.validation": False,
            "blend.components": ["als_implicit", "global_mean"],
            "blend.weights": [0.5, 0.5],
        }
    )
    out = train.run(spark, blend_cfg)
    manifest = io.read_manifest(blend_cfg, "models/blend")
    assert out["models"]["blend"]["path"] and manifest is not None
    assert manifest["split_version"] == io.read_manifest(blend_cfg, "splits/random/train")["version"]
