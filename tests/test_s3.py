"""Object storage end to end against a real S3-compatible server (moto's standalone
server on 127.0.0.1, started here and stopped at the end): the cluster docs' commands
with `--store s3://...` and `--out s3://...` run as written."""

import os

import pytest

from mer_ray.cli.main import main
from mer_ray.data.synth_files import synthesize
from raytools import set_args
from servers import moto_s3

BUCKET = "mer-bucket"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # pyarrow's S3 filesystem reads these (as a job's nodes would)
        try:
            yield f"s3://{BUCKET}"
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.mark.slow
def test_import_upload_train_score_report_predict_on_s3(s3, tmp_path, capsys):
    import pyarrow.fs as pafs

    tree = synthesize(tmp_path / "tree", scale=0.05, progress=False)
    local = tmp_path / "store"
    assert main(["data", "import", "--features", str(tree / "features"), "--labels",
                 str(tree / "labels.csv"), "--out", str(local), "--quiet"]) == 0
    pafs.copy_files(str(local), f"{s3}/store")  # upload, as a user would
    store, run = f"{s3}/store", f"{s3}/runs/v3"
    assert main(["data", "summary", store, "--verify"]) == 0
    args = ["--store", store, "--out", run, "--pack-size", "5", *set_args(),
            "--set", "epochs=1"]
    assert main(["train", "--no-ray", *args]) == 0
    capsys.readouterr()
    assert main(["status", run]) == 0  # read from S3: all saved, nothing in flight
    text = capsys.readouterr().out
    assert "5 of 5 member(s) saved (0 failed), 0 in flight" in text and "complete" in text
    assert main(["train", "--no-ray", *args]) == 0  # resume finds the members on S3
    assert "5 already saved" in capsys.readouterr().out
    assert main(["ensemble", "score", run]) == 0
    assert f"to {run}/ensemble" in capsys.readouterr().out
    assert main(["report", run]) == 0
    assert main(["predict", run, "--store", store, "--split", "test1", "--out",
                 f"{s3}/predictions", "--quiet"]) == 0
    fs, path = pafs.FileSystem.from_uri(f"{s3}/runs/v3")
    names = {i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(
        pafs.FileSelector(path, recursive=True))}
    assert {"run.json", "scores.json", "report.html", "submission_test2.csv"} <= names
    assert sum(n.endswith(".safetensors") for n in names) == 5
    # TensorBoard curves uploaded at the end of the pack, one file per member; no
    # progress file left once the pack's members are saved
    events = [i for i in fs.get_file_info(pafs.FileSelector(f"{path}/tensorboard",
                                                            recursive=True))
              if "tfevents" in i.base_name]
    assert len(events) == 5
    assert not fs.get_file_info(pafs.FileSelector(f"{path}/progress", allow_not_found=True))
    # a store written straight to S3 by the importer, and the tune command through Ray
    assert main(["data", "import", "--features", str(tree / "features"), "--labels",
                 str(tree / "labels.csv"), "--out", f"{s3}/store2", "--quiet"]) == 0
    assert main(["tune", "--store", f"{s3}/store2", "--out", f"{s3}/runs/grid", "--warmup",
                 "1", "--pack-size", "5", *set_args(), "--set", "epochs=1"]) == 0
    assert "warmup=1" in capsys.readouterr().out


def test_s3_mistakes_are_one_line(s3, capsys):
    assert main(["data", "summary", f"{s3}/no-such-store"]) == 2
    assert "is not a feature store" in capsys.readouterr().err
    assert main(["ensemble", "score", f"{s3}/no-such-run"]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_a_missing_bucket_and_a_dead_endpoint_say_so(s3, capsys, monkeypatch):
    from servers import free_port

    assert main(["data", "summary", "s3://no-such-bucket/store"]) == 2
    err = capsys.readouterr().err
    assert "the bucket 'no-such-bucket' does not exist" in err
    assert f"endpoint {os.environ['AWS_ENDPOINT_URL']} from AWS_ENDPOINT_URL" in err
    assert main(["ensemble", "score", "s3://no-such-bucket/run"]) == 2
    assert "the bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    assert main(["data", "summary", f"{s3}/store"]) == 1
    err = capsys.readouterr().err
    assert f"endpoint {dead} from AWS_ENDPOINT_URL" in err and "Traceback" not in err
