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


# /metrics in the public recipes (security review, finding 6): each sets FLUXHOOK_METRICS_TOKEN from the
# platform's secret manager, or cannot start with /metrics open.

def protection(env: dict[str, Any]) -> set[str]:
    """The settings among `env` (name -> value as the recipe gives it) that protect /metrics, each taken
    from a secret store: a Secret Manager reference (Cloud Run) or a Secrets Manager dynamic reference."""
    found = set()
    for name in ("FLUXHOOK_METRICS_TOKEN", "FLUXHOOK_API_KEYS"):
        value = env.get(name)
        if isinstance(value, dict) and ("secretKeyRef" in value.get("valueFrom", {})
                                        or "{{resolve:secretsmanager:" in json.dumps(value)):
            found.add(name)
    return found


def test_cloud_run_is_public_and_takes_the_metrics_token_from_secret_manager() -> None:
    service = load_yaml(DEPLOY / "cloudrun" / "service.yaml")
    assert service["metadata"]["annotations"]["run.googleapis.com/ingress"] == "all"
    assert "--member=allUsers" in (DEPLOY / "cloudrun" / "README.md").read_text()  # public: protection required
    (container,) = service["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert protection(env) == {"FLUXHOOK_METRICS_TOKEN"}
    secret = env["FLUXHOOK_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert f"gcloud secrets create {secret}" in (DEPLOY / "cloudrun" / "README.md").read_text()


def test_the_lambda_function_url_is_public_and_takes_the_metrics_token_from_secrets_manager() -> None:
    doc = load_yaml(DEPLOY / "lambda" / "template.yaml")
    props = doc["Resources"]["Fluxhook"]["Properties"]
    assert props["FunctionUrlConfig"]["AuthType"] == "NONE"  # public: protection required
    variables = props["Environment"]["Variables"]
    assert protection({k: v for k, v in variables.items() if isinstance(v, dict)}) == {"FLUXHOOK_METRICS_TOKEN"}
    assert variables["FLUXHOOK_METRICS_TOKEN"] == {"Fn::Sub": "{{resolve:secretsmanager:${MetricsTokenSecret}}}"}
    default = doc["Parameters"]["MetricsTokenSecret"]["Default"]
    assert f"aws secretsmanager create-secret --name {default}" in (DEPLOY / "lambda" / "lambda.md").read_text()


def test_the_container_image_cannot_start_public_with_metrics_open() -> None:
    from receiver.config.settings import Settings
    from receiver.serve.exposure import metrics_exposure

    text = (DEPLOY / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    argv = json.loads(cmd)
    host = argv[argv.index("--host") + 1]
    (env_line,) = re.findall(r"^ENV (.*)$", text, re.M)
    image_env = dict(pair.split("=", 1) for pair in env_line.split())
    assert "FLUXHOOK_METRICS_PUBLIC" not in text.split("CMD")[-1] and "FLUXHOOK_METRICS_PUBLIC" not in image_env
    assert metrics_exposure(Settings.from_env(image_env), host) is not None  # refused until given a token
    assert metrics_exposure(Settings.from_env(image_env | {"FLUXHOOK_METRICS_TOKEN": "t" * 32}), host) is None
    service = load_yaml(DEPLOY / "cloudrun" / "service.yaml")  # the same serve, on Cloud Run, starts
    (container,) = service["spec"]["template"]["spec"]["containers"]
    assert "--host 0.0.0.0" in " ".join(container["args"]) and "FLUXHOOK_METRICS_TOKEN" in json.dumps(container)


def test_the_vm_recipe_listens_on_loopback_and_nginx_never_forwards_metrics() -> None:
    unit = (DEPLOY / "fluxhook.service").read_text()
    assert "fluxhook serve --host 127.0.0.1 " in unit
    conf = (DEPLOY / "nginx" / "fluxhook.conf").read_text()
    block = re.search(r"location = /metrics \{(.*?)\}", conf, re.S)
    assert block is not None and block.group(1).split() == ["deny", "all;"]
