"""The deploy recipes (deploy/lambda, deploy/cloudrun), checked as far as can be done without a cloud:
every file parses, the handler they name imports, every FLUXHOOK_* variable they mention exists."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
RECIPES = [DEPLOY / "lambda", DEPLOY / "cloudrun"]
FILES = sorted(p for folder in RECIPES for p in folder.iterdir() if p.is_file())

def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_both_recipes_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in FILES}
    assert {"lambda/template.yaml", "lambda/lambda.md", "lambda/iam-policy.json",
            "cloudrun/service.yaml", "cloudrun/scheduler-job.json", "cloudrun/README.md"} <= names


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".json"], ids=lambda p: p.name)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix in {".yaml", ".yml"}], ids=lambda p: p.name)
def test_yaml_is_well_formed(path: Path) -> None:
    text = path.read_text()
    assert "\t" not in text, "tabs in YAML indentation"
    assert not re.search(r"^\s*[^#\n]*!(Ref|Sub|GetAtt)\b", text, re.M), "short-form tags: use the long form"
    assert isinstance(load_yaml(path), dict)


def test_lambda_template_names_the_handler_the_schedule_and_the_policy() -> None:
    doc = load_yaml(DEPLOY / "lambda" / "template.yaml")
    fn = doc["Resources"]["Fluxhook"]
    assert fn["Type"] == "AWS::Serverless::Function"
    props = fn["Properties"]
    assert props["Handler"] == "receiver.serve.aws_lambda.handler"
    assert props["Runtime"].startswith("python3.1")
    (event,) = props["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == "rate(1 minute)"
    statements = props["Policies"][0]["Statement"]
    main = next(s for s in statements if s["Sid"] == "ResultObjects")
    assert sorted(main["Action"]) == sorted(
        ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"])
    assert main["Resource"] == {"Fn::Sub": "arn:aws:s3:::${ResultsBucket}/${ResultsPrefix}/*"}
    assert all(s["Effect"] == "Allow" and "*" not in json.dumps(s["Action"]) for s in statements)
    assert "FLUXHOOK_DB" in props["Environment"]["Variables"]


def test_iam_policy_is_least_privilege_on_the_results_prefix() -> None:
    policy = json.loads((DEPLOY / "lambda" / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            assert action.startswith("s3:") and "*" not in action
        if statement["Action"] == ["s3:ListBucket"]:
            assert statement["Resource"] == "arn:aws:s3:::BUCKET"
            assert statement["Condition"] == {"StringLike": {"s3:prefix": "PREFIX/*"}}
        else:
            assert statement["Resource"] == "arn:aws:s3:::BUCKET/PREFIX/*"
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {"s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"} <= actions


def test_scheduled_event_sample_is_one_the_handler_sweeps_for() -> None:
    from receiver.serve.aws_lambda import is_scheduled

    assert is_scheduled(json.loads((DEPLOY / "lambda" / "scheduled-event.json").read_text()))


def test_cloud_run_serves_on_port_and_scheduler_posts_the_sweep_with_a_bearer() -> None:
    service = load_yaml(DEPLOY / "cloudrun" / "service.yaml")
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    (container,) = service["spec"]["template"]["spec"]["containers"]
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "fluxhook serve --host 0.0.0.0 --port \"$PORT\"" in command
    env = {e["name"] for e in container["env"]}
    assert {"FLUXHOOK_PUBLIC_URL", "FLUXHOOK_DB", "FLUXHOOK_SECRET_KEY", "FLUXHOOK_SWEEP_TOKEN"} <= env
    job = json.loads((DEPLOY / "cloudrun" / "scheduler-job.json").read_text())
    target = job["httpTarget"]
    assert target["httpMethod"] == "POST" and target["uri"].endswith("/v1/sweep")
    assert target["headers"]["Authorization"].startswith("Bearer ")
    assert job["schedule"] == "* * * * *"


def test_every_handler_named_imports() -> None:
    named = set()
    for path in FILES:
        named |= set(re.findall(r"\breceiver\.serve\.aws_lambda[.:](\w+)", path.read_text()))
    assert named == {"handler"}
    module = importlib.import_module("receiver.serve.aws_lambda")
    assert callable(module.handler)


def test_every_fluxhook_variable_named_exists_in_settings() -> None:
    source = "".join(path.read_text() for path in sorted((ROOT / "receiver" / "config").glob("*.py")))
    named = {name for path in FILES for name in re.findall(r"\bFLUXHOOK_[A-Z0-9_]*[A-Z0-9]", path.read_text())}
    assert named, "no FLUXHOOK_* variables found"
    unknown = sorted(n for n in named if f'"{n}"' not in source)
    assert not unknown, f"not read by receiver/config/: {unknown}"
