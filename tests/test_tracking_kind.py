"""MLflow 3 shows fedsim's experiments as model training, not as GenAI apps."""

from __future__ import annotations


def test_experiment_is_tagged_as_model_training(small_config, tmp_path):
    import mlflow

    from fedsim.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MLflowTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = small_config(f"tracking.tracking_uri={uri}", "tracking.enabled=true", "tracking.experiment=kind-exp")
    tracker = MLflowTracker(cfg)
    try:
        tracker.start()
    finally:
        mlflow.end_run()
    assert EXPERIMENT_KIND == "custom_model_development" and EXPERIMENT_KIND_TAG == "mlflow.experimentKind"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kind-exp")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # a kind the user chose in the UI is kept on the next run
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "forecasting")
    try:
        MLflowTracker(cfg).start()
    finally:
        mlflow.end_run()
    assert client.get_experiment_by_name("kind-exp").tags[EXPERIMENT_KIND_TAG] == "forecasting"
