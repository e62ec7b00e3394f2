"""The deployment files (deploy/Dockerfile, deploy/compose.yaml, deploy/k8s/) against the code
they run: no broker, no Docker engine, no cluster, no Ray.

Every check is a function that returns the problems it finds in a ``Files`` (the parsed files);
each is run once on the real files (no problems) and once on a copy with one deliberate mistake
(the mistake is found), so that no check passes by finding nothing to look at. Where the code
decides something (flags over environment, Serve's application builder, the retrain's choice
of GPUs), the check asks the code rather than restating it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

import streams.ingest.topics
from abtest.settings import AbSettings
from learner.ray_jobs import NotEnoughResources, RayStageRunner
from learner.settings import LearnerSettings, RetrainSettings
from pagellm import build_parser
from serving.cli import serving_settings
from serving.settings import ServingSettings
from streams.cli import settings_from
from streams.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
# The README's section on deploy/, drafted beside the files until it is merged into README.md.
README = ROOT / "README.md"
SCALE_OUT_TITLE = "## Scale-out deployment (`deploy/`)"

# Every settings class that reads PAGELLM_* variables; the variables themselves are derived
# from each class's env_prefix and fields.
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    StreamSettings,
    ServingSettings,
    RetrainSettings,
    AbSettings,
)
SHELLS = {"sh", "bash"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
# Subcommands whose process reads or writes the event store where it runs.
STORE_COMMANDS = {"worker", "derive", "store", "snapshot", "train", "retrain", "registry", "serve"}
RAY_KINDS = {"RayCluster", "RayService"}  # KubeRay's kinds that start Ray nodes
SERVE_PORT: int = ServingSettings.model_fields["port"].default
SERVE_APP = "pagellm"
# ServingSettings fields that only `pagellm serve run` reads: under a RayService, Serve's
# http_options set the address.
SERVE_RUN_ONLY = {"host", "port", "run_dir"}


# --- the files, parsed --------------------------------------------------------------------


@dataclass
class Container:
    """One container of compose or Kubernetes, as far as the checks need it."""

    where: str
    image: str
    argv: list[str] | None  # None: the command is not ours to check (KubeRay starts Ray nodes)
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)  # mount path -> volume source
    ports: dict[str, int] = field(default_factory=dict)  # port name (or index) -> container port
    ray_node: bool = False  # a Ray node of the platform image: Ray tasks of ours may run here
    kind: str = ""  # the Kubernetes kind that holds it ("" in compose)
    doc: dict[str, Any] = field(default_factory=dict)  # the compose service or Kubernetes object

    @property
    def side(self) -> str:
        return "k8s" if self.kind else "compose"


@dataclass
class Files:
    compose: dict[str, Any]
    k8s: list[dict[str, Any]]
    dockerfile: str
    scale_out: str
    kustomization: dict[str, Any]
    k8s_files: set[str]  # the YAML files in deploy/k8s but kustomization.yaml

    def docs(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.k8s if d["kind"] == kind]

    def config_maps(self) -> dict[str, dict[str, str]]:
        return {d["metadata"]["name"]: d.get("data", {}) for d in self.docs("ConfigMap")}


def scale_out_section() -> str:
    """The README's scale-out section."""
    text = README.read_text()
    assert SCALE_OUT_TITLE in text, f"README.md has no {SCALE_OUT_TITLE!r}"
    section = text.split(SCALE_OUT_TITLE, 1)[1]
    return SCALE_OUT_TITLE + re.split(r"\n## ", section, maxsplit=1)[0]


def load_files() -> Files:
    paths = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return Files(
        compose=yaml.safe_load((DEPLOY / "compose.yaml").read_text()),
        k8s=[doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc],
        dockerfile=DOCKERFILE.read_text(),
        scale_out=scale_out_section(),
        kustomization=yaml.safe_load((K8S / "kustomization.yaml").read_text()),
        k8s_files={p.name for p in paths},
    )


@pytest.fixture(scope="module")
def files() -> Files:
    return load_files()


def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def kafka_version() -> str:
    pom = ET.parse(DEPLOY / "kafka" / "pom.xml").getroot()
    version = pom.find("m:properties/m:kafka.version", {"m": "http://maven.apache.org/POM/4.0.0"})
    assert version is not None and version.text, "deploy/kafka/pom.xml names no kafka.version"
    return version.text.strip()


def ray_pin() -> str:
    for requirement in project()["project"]["dependencies"]:
        if match := re.fullmatch(r"ray(\[[^\]]*\])?==(\S+)", requirement.replace(" ", "")):
            return match.group(2)
    raise AssertionError("pyproject.toml pins no ray version")


def platform_image(files: Files) -> str:
    """The image the README's scale-out section says `docker build -f deploy/Dockerfile`
    makes."""
    built = re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", files.scale_out)
    assert built, "the README shows no `docker build -f deploy/Dockerfile -t IMAGE .`"
    return built[0]


def dockerfile_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments left out."""
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def dockerfile_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile_lines(text):
        if line.upper().startswith("ENV "):
            for token in shlex.split(line[4:]):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def as_argv(value: str | list[Any] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_env(value: dict[str, Any] | list[str] | None) -> dict[str, str]:
    if isinstance(value, list):
        return dict(item.partition("=")[::2] for item in value)
    return {k: "" if v is None else str(v) for k, v in (value or {}).items()}


def compose_containers(files: Files) -> list[Container]:
    platform = platform_image(files)
    image_env = dockerfile_env(files.dockerfile)
    containers = []
    for name, service in files.compose["services"].items():
        image = service.get("image", "")
        ours = image == platform
        entry = as_argv(service.get("entrypoint")) if "entrypoint" in service else None
        if entry is None:
            entry = ["pagellm"] if ours else []
        argv = entry + as_argv(service.get("command"))
        mounts = {}
        for volume in service.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            mounts[target.split(":")[0]] = source
        ports = {}
        for index, port in enumerate(service.get("ports") or []):
            ports[str(index)] = int(str(port).rsplit(":", 1)[-1].split("/")[0])
        containers.append(
            Container(
                where=f"compose service {name}",
                image=image,
                argv=argv or None,
                env=(image_env if ours else {}) | compose_env(service.get("environment")),
                mounts=mounts,
                ports=ports,
                ray_node=ours and any(cmd[:2] == ["ray", "start"] for cmd in command_lines(argv)),
                doc=service,
            )
        )
    return containers


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template in a Kubernetes document."""
    kind, name = doc.get("kind", ""), doc.get("metadata", {}).get("name", "")

    def walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            template = node.get("template")
            if isinstance(template, dict) and "containers" in template.get("spec", {}):
                yield f"{kind}/{name}{path}", template["spec"]
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if key != "spec" else path)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{path}[{index}]")

    yield from walk(doc, "")


def k8s_containers(files: Files) -> list[Container]:
    platform = platform_image(files)
    image_env = dockerfile_env(files.dockerfile)
    config_maps = files.config_maps()
    containers = []
    for doc in files.k8s:
        for where, spec in pod_specs(doc):
            volumes = {}
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    volumes[volume["name"]] = volume["persistentVolumeClaim"]["claimName"]
                elif "configMap" in volume:
                    volumes[volume["name"]] = f"configmap:{volume['configMap']['name']}"
                else:
                    volumes[volume["name"]] = next(iter(volume.keys() - {"name"}))
            ray_pod = doc["kind"] in RAY_KINDS
            items = [(i, False) for i in spec.get("initContainers", [])]
            items += [(c, ray_pod) for c in spec["containers"]]
            for item, ray_node in items:
                image = item["image"]
                ours = image == platform
                env = dict(image_env) if ours else {}
                for source in item.get("envFrom", []):
                    env |= config_maps.get(source.get("configMapRef", {}).get("name"), {})
                env |= {e["name"]: str(e["value"]) for e in item.get("env", []) if "value" in e}
                command, args = as_argv(item.get("command")), as_argv(item.get("args"))
                argv: list[str] | None = None  # KubeRay's command, or the image's own CMD
                if not ray_node and command:
                    argv = command + args
                elif not ray_node and args:
                    argv = (["pagellm"] if ours else []) + args  # the image's entrypoint
                containers.append(
                    Container(
                        where=f"{where} container {item['name']}",
                        image=image,
                        argv=argv,
                        env=env,
                        mounts={
                            m["mountPath"]: volumes.get(m["name"], m["name"])
                            for m in item.get("volumeMounts", [])
                        },
                        ports={
                            p.get("name", str(i)): p["containerPort"]
                            for i, p in enumerate(item.get("ports", []))
                        },
                        ray_node=ray_node and ours,
                        kind=doc["kind"],
                        doc=doc,
                    )
                )
    return containers


def all_containers(files: Files) -> list[Container]:
    return compose_containers(files) + k8s_containers(files)


def ray_nodes(files: Files, doc: dict[str, Any]) -> tuple[Container, list[Container]]:
    """The head and every Ray node (head included) of a RayCluster or RayService."""
    nodes = [c for c in k8s_containers(files) if c.doc is doc and c.ray_node]
    return next(c for c in nodes if ".headGroupSpec" in c.where), nodes


def ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """A RayCluster's spec, or the cluster a RayService starts."""
    return doc["spec"]["rayClusterConfig"] if doc["kind"] == "RayService" else doc["spec"]


def quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_resources(cluster: dict[str, Any]) -> dict[str, float]:
    """{"CPU": n, "GPU": n} of a Ray cluster with its groups at their replicas, as Ray counts
    a pod's: its num-cpus / num-gpus start parameter, else its Ray container's limits."""
    total = {"CPU": 0.0, "GPU": 0.0}
    groups = [(cluster["headGroupSpec"], 1)]
    groups += [(g, g.get("replicas", 1)) for g in cluster.get("workerGroupSpecs", [])]
    for group, pods in groups:
        params = group.get("rayStartParams", {})
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        for kind, param, limit in (
            ("CPU", "num-cpus", "cpu"),
            ("GPU", "num-gpus", "nvidia.com/gpu"),
        ):
            total[kind] += pods * quantity(params.get(param, limits.get(limit, 0)))
    return total


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with a container's PAGELLM_* variables instead of the test process's."""
    outside = {k: v for k, v in os.environ.items() if not k.startswith("PAGELLM_")}
    with mock.patch.dict(os.environ, outside | pagellm_env(env), clear=True):
        yield


def pagellm_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PAGELLM_")}


# --- command lines -------------------------------------------------------------------------


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (split at && || ; | &)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def command_lines(argv: list[str]) -> list[list[str]]:
    """The command lines a container runs: its argv, or the commands of its shell script;
    `exec` and leading VAR=value assignments dropped."""
    if not argv:
        return []
    if PurePosixPath(argv[0]).name in SHELLS:
        script = next((a for i, a in enumerate(argv) if i and not a.startswith("-")), "")
        lines = shell_commands(script)
    else:
        lines = [argv]
    cleaned = []
    for line in lines:
        while line and (line[0] == "exec" or re.fullmatch(r"[A-Za-z_]\w*=.*", line[0])):
            line = line[1:]
        if line:
            cleaned.append(line)
    return cleaned


def pagellm_argvs(argv: list[str] | None) -> list[list[str]]:
    """The arguments of every `pagellm` command line in a container's argv, including one
    handed to another program after `--` (e.g. `ray job submit ... -- pagellm ...`)."""
    found = []
    for line in command_lines(argv or []):
        if "pagellm" in line:
            found.append(line[line.index("pagellm") + 1 :])
    return found


def submitted_to(argv: list[str] | None) -> str | None:
    """The Ray dashboard address of a `ray job submit` command line, else None."""
    for line in command_lines(argv or []):
        if line[:3] == ["ray", "job", "submit"] and "--address" in line:
            return line[line.index("--address") + 1]
    return None


def parsed(argv: list[str]) -> argparse.Namespace | None:
    """The namespace of the project's own parser, None where argparse would exit
    (check_commands_parse reports it)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        return None


def parsed_commands(files: Files) -> list[tuple[Container, argparse.Namespace]]:
    """(container, namespace) of every pagellm command line that parses."""
    return [
        (container, args)
        for container in all_containers(files)
        for args in map(parsed, pagellm_argvs(container.argv))
        if args is not None
    ]


def command_name(args: argparse.Namespace) -> str:
    return " ".join(x for x in (args.command, getattr(args, "action", None)) if x)


# --- the checks: each returns its problems --------------------------------------------------


def check_commands_parse(files: Files) -> list[str]:
    problems = []
    for container in all_containers(files):
        for argv in pagellm_argvs(container.argv):
            args = parsed(argv)
            if args is None:
                problems.append(f"{container.where}: `pagellm {shlex.join(argv)}` does not parse")
            elif args.command == "worker" and not args.writer_id:
                problems.append(f"{container.where}: `pagellm worker` without --id")
    return problems


def check_expected_commands(files: Files) -> list[str]:
    """Compose and Kubernetes each run the parts the platform needs (Kubernetes serves through
    a RayService: check_ray_service)."""
    expected = {
        "compose": {"topics", "store init", "worker", "derive", "retrain serve-loop", "serve run"},
        "k8s": {"store init", "worker", "derive", "retrain now"},
    }
    found: dict[str, set[str]] = {"compose": set(), "k8s": set()}
    for container, args in parsed_commands(files):
        found[container.side].add(command_name(args))
    return [
        f"{side} runs no `pagellm {name}`"
        for side, names in expected.items()
        for name in sorted(names - found[side])
    ]


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads: its prefix and fields, and nested
    models' fields through env_nested_delimiter where the class has one."""
    prefix = settings.model_config.get("env_prefix", "")
    delimiter = settings.model_config.get("env_nested_delimiter")
    names: set[str] = set()

    def walk(model: type[BaseModel], stem: str) -> None:
        for name, info in model.model_fields.items():
            variable = f"{stem}{name}".upper()
            names.add(variable)
            nested = info.annotation
            if delimiter and isinstance(nested, type) and issubclass(nested, BaseModel):
                walk(nested, f"{variable}{delimiter}")

    walk(settings, prefix)
    return names


def known_variables() -> set[str]:
    return set().union(*(env_names(s) for s in SETTINGS_CLASSES))


def check_env(files: Files) -> list[str]:
    """Every PAGELLM_* variable is one a settings class reads, and its value is valid there."""
    known = known_variables()
    named = [("Dockerfile", dockerfile_env(files.dockerfile))]
    named += [(f"ConfigMap/{name}", data) for name, data in files.config_maps().items()]
    problems = []
    for where, env in named:
        problems += [f"{where}: {v} is no setting" for v in sorted(pagellm_env(env).keys() - known)]
    for container in all_containers(files):
        unknown = pagellm_env(container.env).keys() - known
        problems += [f"{container.where}: {name} is no setting" for name in sorted(unknown)]
        with environment(container.env):
            for settings in SETTINGS_CLASSES:
                try:
                    settings()
                except ValidationError as exc:
                    problems.append(f"{container.where}: {settings.__name__}: {exc}")
    return problems


def code_topics() -> dict[str, bool]:
    """{topic: compacted} as `pagellm topics` creates them with the default settings."""
    created: dict[str, bool] = {}

    def record(bootstrap: str, name: str, *args: Any, compacted: bool = False, **_: Any) -> bool:
        created[name] = compacted
        return True

    with mock.patch.object(streams.ingest.topics, "create_topic", record):
        streams.ingest.topics.ensure_topics(StreamSettings.model_construct())
    return created


def default_topics() -> set[str]:
    return {
        str(info.default)
        for name, info in StreamSettings.model_fields.items()
        if name.endswith("_topic")
    }


def topic_name(doc: dict[str, Any]) -> str:
    return str(doc["spec"].get("topicName") or doc["metadata"]["name"])


def check_topics(files: Files) -> list[str]:
    """Topics named anywhere are the code's; Strimzi's are exactly the code's, compacted as
    the code creates them."""
    code, defaults = code_topics(), default_topics()
    problems = []
    if set(code) != defaults:
        problems.append(f"ensure_topics creates {sorted(code)}, the settings name {defaults}")
    named = [
        (container.where, v)
        for container in all_containers(files)
        for k, v in container.env.items()
        if re.fullmatch(r"PAGELLM_\w*TOPIC", k)
    ]
    for container, args in parsed_commands(files):
        for attr in ("events_topic", "catalogue_topic"):
            if getattr(args, attr, None) is not None:
                named.append((container.where, getattr(args, attr)))
    strimzi = {topic_name(d): d for d in files.docs("KafkaTopic")}
    named += [(f"KafkaTopic {name}", name) for name in strimzi]
    problems += [
        f"{where}: topic {t!r} is not one the code uses" for where, t in named if t not in defaults
    ]
    if set(strimzi) != set(code):
        problems.append(f"KafkaTopics {sorted(strimzi)} are not the code's {sorted(code)}")
    for name, doc in strimzi.items():
        compact = doc["spec"].get("config", {}).get("cleanup.policy") == "compact"
        if name in code and compact != code[name]:
            problems.append(f"KafkaTopic {name}: compacted {compact}, the code: {code[name]}")
    return problems


def check_kafka(files: Files) -> list[str]:
    """Strimzi: three brokers and controllers, topics with 3 replicas and 2 in sync. Topics
    that `pagellm topics` creates have the partitions of Strimzi's and no more replicas than
    there are brokers; ingest workers are no more than the partitions can feed."""
    problems = []
    pools = files.docs("KafkaNodePool")
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    if (brokers, controllers) != (3, 3):
        problems.append(f"node pools: {brokers} brokers, {controllers} controllers (want 3, 3)")
    (kafka,) = files.docs("Kafka")
    config = kafka["spec"]["kafka"]["config"]
    if int(config.get("default.replication.factor", 1)) != 3:
        problems.append("Kafka: default.replication.factor is not 3")
    if int(config.get("min.insync.replicas", 1)) != 2:
        problems.append("Kafka: min.insync.replicas is not 2")
    for doc in files.docs("KafkaTopic"):
        spec = doc["spec"]
        if spec.get("replicas") != 3:
            problems.append(f"KafkaTopic {topic_name(doc)}: replicas {spec.get('replicas')}")
        if int(spec.get("config", {}).get("min.insync.replicas", 0)) != 2:
            problems.append(f"KafkaTopic {topic_name(doc)}: min.insync.replicas is not 2")
    events = str(StreamSettings.model_fields["events_topic"].default)
    partitions = {topic_name(d): d["spec"]["partitions"] for d in files.docs("KafkaTopic")}
    compose_brokers = sum(c.image.startswith("apache/kafka:") for c in compose_containers(files))
    brokers_of = {"compose": compose_brokers, "k8s": brokers}
    for container, args in parsed_commands(files):
        if args.command == "topics":
            with environment(container.env):
                settings = settings_from(args)
            if settings.partitions != partitions.get(events):
                problems.append(
                    f"{container.where}: {settings.partitions} partitions, Strimzi's "
                    f"{events} has {partitions.get(events)}"
                )
            if settings.replication_factor > brokers_of[container.side]:
                problems.append(
                    f"{container.where}: replication factor {settings.replication_factor}, "
                    f"{brokers_of[container.side]} brokers"
                )
        if args.command == "worker":
            # compose: deploy.replicas of the service; Kubernetes: spec.replicas of the Deployment
            replicas = int(
                container.doc.get("spec" if container.kind else "deploy", {}).get("replicas", 1)
            )
            if replicas > partitions.get(events, 0):
                problems.append(
                    f"{container.where}: {replicas} ingest workers, more than the "
                    f"{partitions.get(events)} partitions of {events}"
                )
    return problems


def check_serve_run(files: Files) -> list[str]:
    """`pagellm serve run` (compose) listens on ServingSettings' default port on all
    interfaces, as its flags and environment resolve, and exposes that port."""
    problems = []
    serving = [(c, a) for c, a in parsed_commands(files) if command_name(a) == "serve run"]
    for container, args in serving:
        with environment(container.env):
            settings = serving_settings(args)
        if settings.port != SERVE_PORT:
            problems.append(f"{container.where}: serves on port {settings.port}, not {SERVE_PORT}")
        if settings.host != "0.0.0.0":
            problems.append(f"{container.where}: binds {settings.host}, unreachable from outside")
        if sorted(set(container.ports.values())) != [SERVE_PORT]:
            problems.append(f"{container.where}: exposes {container.ports}, not {SERVE_PORT}")
    if not serving:
        problems.append("no container runs `pagellm serve run`")
    return problems


def check_ray_service(files: Files) -> list[str]:
    """Kubernetes serves through one RayService whose serveConfigV2 is a valid Serve config:
    the application `pagellm` at `/`, built as Serve builds it (import_path, called with args)
    under the Ray nodes' environment, from args that are settings fields; Serve's proxy on
    ServingSettings' default port, which is also the head's `serve` port (KubeRay's serve
    service takes it from there); the replicas fit the cluster's CPUs."""
    services = files.docs("RayService")
    problems = [] if len(services) == 1 else [f"{len(services)} RayServices, not 1 (serving)"]
    settings_fields = ServingSettings.model_fields.keys() | StreamSettings.model_fields.keys()
    for doc in services:
        where = f"RayService/{doc['metadata']['name']}"
        try:
            config = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
        except (yaml.YAMLError, ValidationError) as exc:
            problems.append(f"{where}: serveConfigV2: {exc}")
            continue
        http = config.http_options
        if (http.host, http.port) != ("0.0.0.0", SERVE_PORT):
            problems.append(f"{where}: Serve listens on {http.host}:{http.port}")
        head, nodes = ray_nodes(files, doc)
        if head.ports.get("serve") != SERVE_PORT:
            problems.append(f"{head.where}: port `serve` is {head.ports.get('serve')}")
        if len({json.dumps(pagellm_env(n.env), sort_keys=True) for n in nodes}) != 1:
            problems.append(f"{where}: the Ray nodes' PAGELLM_* differ; Serve builds on any")
        apps = {app.name: app for app in config.applications}
        if set(apps) != {SERVE_APP} or apps[SERVE_APP].route_prefix != "/":
            problems.append(f"{where}: applications {sorted(apps)}, not {SERVE_APP!r} at /")
            continue
        app = apps[SERVE_APP]
        if unknown := app.args.keys() - settings_fields:
            problems.append(f"{where}: args {sorted(unknown)} are no settings fields")
        if unused := app.args.keys() & SERVE_RUN_ONLY:
            problems.append(f"{where}: args {sorted(unused)} are for `serve run` only")
        try:
            with environment(head.env):  # what Serve's controller does with the two
                built = call_user_app_builder_with_args_if_necessary(
                    import_attr(app.import_path), app.args
                )
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            problems.append(f"{where}: {app.import_path}({app.args}): {exc!r}")
            continue
        deployment = built._bound_deployment
        needed = deployment.num_replicas * deployment.ray_actor_options.get("num_cpus", 1)
        cpus = ray_resources(ray_cluster_spec(doc))["CPU"]
        if needed > cpus:
            problems.append(
                f"{where}: {deployment.num_replicas} replicas need {needed} CPUs of {cpus}"
            )
    return problems


def check_images(files: Files) -> list[str]:
    """Kafka at pom.xml's version, Ray at pyproject's pin, ours as built from deploy/Dockerfile."""
    problems = []
    platform = platform_image(files)
    version = project()["project"]["version"]
    if platform != f"pagellm/platform:{version}":
        problems.append(f"the platform image {platform} is not tagged {version}")
    if f"-t {platform} " not in files.dockerfile:
        problems.append(f"deploy/Dockerfile's build line does not make {platform}")
    kinds = {"kafka": 0, "ray": 0, "platform": 0}
    for container in all_containers(files):
        image = container.image
        repository, _, tag = image.rpartition(":")
        if repository == "apache/kafka":
            kinds["kafka"] += 1
            if tag != kafka_version():
                problems.append(f"{container.where}: {image}, pom.xml has {kafka_version()}")
        elif repository == "rayproject/ray":
            kinds["ray"] += 1
            if tag.split("-")[0] != ray_pin() or "py311" not in tag.split("-"):
                problems.append(f"{container.where}: {image}, not ray {ray_pin()} py311")
        elif image.startswith("pagellm/"):
            kinds["platform"] += 1
            if image != platform:
                problems.append(f"{container.where}: {image}, the Dockerfile builds {platform}")
        else:
            problems.append(f"{container.where}: unexpected image {image}")
    problems += [f"no {kind} image is used" for kind, n in kinds.items() if not n]
    for name, service in files.compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (DEPLOY / build.get("context", ".")).resolve()
        if context != ROOT or build.get("dockerfile") != "deploy/Dockerfile":
            problems.append(f"compose service {name} builds {build}, not deploy/Dockerfile")
        if service.get("image") != platform:
            problems.append(f"compose service {name} tags its build {service.get('image')}")
    for doc in files.k8s:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in RAY_KINDS and ray_cluster_spec(doc).get("rayVersion") != ray_pin():
            problems.append(f"{where}: rayVersion is not {ray_pin()}")
        if doc["kind"] == "Kafka" and doc["spec"]["kafka"].get("version") != kafka_version():
            problems.append(f"{where}: version is not {kafka_version()}")
    return problems


def check_dockerfile(files: Files) -> list[str]:
    """python:3.11-slim, `pip install .` of every package pyproject lists, entrypoint pagellm,
    no JRE."""
    lines = dockerfile_lines(files.dockerfile)
    problems = []
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    if froms != ["python:3.11-slim"]:
        problems.append(f"FROM {froms}, not python:3.11-slim")
    entry = [
        json.loads(line[len("ENTRYPOINT ") :]) for line in lines if line.startswith("ENTRYPOINT")
    ]
    if entry != [["pagellm"]]:
        problems.append(f"ENTRYPOINT {entry}, not ['pagellm']")
    copied = {
        PurePosixPath(src).name
        for line in lines
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    }
    setup = project()["tool"]["setuptools"]
    needed = {p.rstrip("*") for p in setup["packages"]["find"]["include"]}
    needed |= {f"{module}.py" for module in setup["py-modules"]}
    needed |= {"pyproject.toml", project()["project"]["readme"]}
    problems += [f"{name} is not copied into the image" for name in sorted(needed - copied)]
    if not any(re.search(r"pip install .*\s\.(\s|$)", line) for line in lines):
        problems.append("no `pip install .`")
    if re.search(r"\b(openjdk|default-jre|jre-headless|temurin)", files.dockerfile):
        problems.append("the image installs a JRE")
    return problems


def check_store(files: Files) -> list[str]:
    """Every process that touches the store, and every Ray node of ours, mounts the one shared
    volume at PAGELLM_STORE_DIR; --store flags name that path; the claim is ReadWriteMany."""
    problems = []
    sources: dict[str, set[str]] = {"compose": set(), "k8s": set()}
    paths: dict[str, set[str]] = {"compose": set(), "k8s": set()}
    for container in all_containers(files):
        if submitted_to(container.argv):
            continue  # the command runs on the Ray head it is submitted to (check_ray_jobs)
        commands = [a for a in map(parsed, pagellm_argvs(container.argv)) if a is not None]
        store = container.env.get("PAGELLM_STORE_DIR")
        for args in commands:
            flag = getattr(args, "store_dir", None)
            if flag is not None and str(flag) != store:
                problems.append(f"{container.where}: --store {flag}, PAGELLM_STORE_DIR {store}")
        if not (container.ray_node or any(a.command in STORE_COMMANDS for a in commands)):
            continue
        if not store or not PurePosixPath(store).is_absolute():
            problems.append(f"{container.where}: PAGELLM_STORE_DIR {store!r} is not absolute")
        elif store not in container.mounts:
            problems.append(f"{container.where}: nothing is mounted at {store}")
        else:
            sources[container.side].add(container.mounts[store])
            paths[container.side].add(store)
    for side in sources:
        if len(sources[side]) != 1 or len(paths[side]) != 1:
            problems.append(f"{side}: the store is {sources[side]} at {paths[side]}, not one")
    claims = {d["metadata"]["name"]: d for d in files.docs("PersistentVolumeClaim")}
    for claim in sources["k8s"]:
        modes = claims.get(claim, {}).get("spec", {}).get("accessModes")
        if modes != ["ReadWriteMany"]:
            problems.append(f"PersistentVolumeClaim {claim}: access modes {modes}")
    return problems


def training_device(learner: LearnerSettings, resources: dict[str, float]) -> str:
    """What the retrain's own runner makes of a Ray cluster with these resources: "GPU",
    "CPU", or why it refuses to start."""
    runner = RayStageRunner(learner.ray)
    with (
        mock.patch("ray.is_initialized", return_value=True),
        mock.patch("ray.cluster_resources", return_value=resources),
    ):
        try:
            runner.connect()
        except NotEnoughResources as exc:
            return f"refused: {exc}"
    return "GPU" if runner.use_gpu else "CPU"


def check_ray_jobs(files: Files) -> list[str]:
    """A submitted retrain reaches a RayCluster of these files whose head mounts the store
    and the learner settings it names; with those settings and the cluster's resources, the
    retrain's runner trains on GPUs."""
    problems = []
    clusters = {d["metadata"]["name"]: d for d in files.docs("RayCluster")}
    config_maps = files.config_maps()
    submitted = 0
    for container in all_containers(files):
        address = submitted_to(container.argv)
        if address is None:
            continue
        submitted += 1
        cluster = re.sub(r"^\w+://", "", address).split(":")[0].removesuffix("-head-svc")
        if cluster not in clusters:
            problems.append(f"{container.where}: submits to {address}, no RayCluster {cluster}")
            continue
        head, _ = ray_nodes(files, clusters[cluster])
        for args in filter(None, map(parsed, pagellm_argvs(container.argv))):
            if str(args.store_dir) not in head.mounts:
                problems.append(f"{head.where}: does not mount {args.store_dir}")
            learner = LearnerSettings()
            if getattr(args, "settings", None) is not None:
                path = PurePosixPath(str(args.settings))
                source = head.mounts.get(str(path.parent), "").removeprefix("configmap:")
                text = config_maps.get(source, {}).get(path.name)
                if text is None:
                    problems.append(f"{head.where}: has no {path}")
                    continue
                learner = LearnerSettings.model_validate_json(text)
            device = training_device(learner, ray_resources(ray_cluster_spec(clusters[cluster])))
            if device != "GPU":
                problems.append(f"RayCluster/{cluster}: the retrain's runner: {device}, not GPU")
    if not submitted:
        problems.append("nothing submits a retrain to a RayCluster")
    return problems


def check_ray_addresses(files: Files) -> list[str]:
    """A RAY_ADDRESS names a compose service that runs a Ray head."""
    services = files.compose["services"]
    heads = {
        name
        for name, s in services.items()
        if "--head" in as_argv(s.get("command")) + as_argv(s.get("entrypoint"))
    }
    addresses = [
        (c.where, c.env["RAY_ADDRESS"]) for c in compose_containers(files) if "RAY_ADDRESS" in c.env
    ]
    problems = [
        f"{where}: RAY_ADDRESS {address} is no Ray head ({heads})"
        for where, address in addresses
        if address.split(":")[0] not in heads
    ]
    if not addresses:
        problems.append("no compose service joins the Ray head through RAY_ADDRESS")
    return problems


def check_kustomization(files: Files) -> list[str]:
    listed, present = set(files.kustomization["resources"]), files.k8s_files
    return [
        f"{name} is in deploy/k8s but not in kustomization.yaml" for name in present - listed
    ] + [f"kustomization.yaml lists {name}, which does not exist" for name in listed - present]


CHECKS: dict[str, Callable[[Files], list[str]]] = {
    "commands parse": check_commands_parse,
    "expected commands": check_expected_commands,
    "env": check_env,
    "topics": check_topics,
    "kafka": check_kafka,
    "serve run": check_serve_run,
    "ray service": check_ray_service,
    "images": check_images,
    "dockerfile": check_dockerfile,
    "store": check_store,
    "ray jobs": check_ray_jobs,
    "ray addresses": check_ray_addresses,
    "kustomization": check_kustomization,
}


# --- tests on the real files -----------------------------------------------------------------


def test_every_yaml_in_deploy_parses() -> None:
    paths = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert {p.relative_to(DEPLOY).as_posix() for p in paths} >= {
        "compose.yaml",
        "k8s/kustomization.yaml",
    }
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} holds no document"
        if path.parent == K8S and path.name != "kustomization.yaml":
            for doc in docs:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: {doc}"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_deploy_files(files: Files, name: str) -> None:
    assert CHECKS[name](files) == []


def test_the_checks_see_what_they_check(files: Files) -> None:
    """The extraction finds the command lines, variables, topics and Ray nodes it is meant to
    check."""
    commands = {command_name(a) for _, a in parsed_commands(files)}
    assert {"topics", "worker", "serve run", "retrain now", "retrain serve-loop"} <= commands
    assert "PAGELLM_RETRAIN_GATES__MAX_KL" in known_variables()
    assert "PAGELLM_SERVE_REPLICAS" in known_variables()
    assert default_topics() == {"pagellm.events", "pagellm.events.dlq", "pagellm.catalogue"}
    assert {c.kind for c in k8s_containers(files) if c.ray_node} == RAY_KINDS
    (serving,), (retrain,) = files.docs("RayService"), files.docs("RayCluster")
    assert ray_resources(ray_cluster_spec(serving))["CPU"] > 0
    assert ray_resources(ray_cluster_spec(retrain))["GPU"] > 0


# --- each check fails on a file with one mistake ---------------------------------------------

Locator = Callable[[Files], Any]
DELETE = object()


@dataclass(frozen=True)
class Edit:
    """A text with old replaced by new (old must be there)."""

    old: str
    new: str


@dataclass(frozen=True)
class Mistake:
    """One deliberate mistake: the value at path under what locate finds in the files set to
    value, deleted (DELETE), or edited (an Edit)."""

    name: str
    locate: Locator
    path: tuple[str | int, ...]
    value: Any = DELETE

    def make(self, files: Files) -> None:
        holder = self.locate(files)
        for step in self.path[:-1]:
            holder = holder[step]
        key = self.path[-1]
        if isinstance(self.value, Edit):
            assert self.value.old in holder[key], f"{self.name}: {self.value.old!r} is not there"
            holder[key] = holder[key].replace(self.value.old, self.value.new)
        elif self.value is DELETE:
            del holder[key]
        else:
            holder[key] = self.value


def compose(service: str) -> Locator:
    return lambda f: f.compose["services"][service]


def k8s(kind: str, name: str | None = None) -> Locator:
    """The first Kubernetes document of the kind (and name)."""
    return lambda f: next(d for d in f.docs(kind) if name in (None, d["metadata"]["name"]))


def pod(kind: str, name: str | None = None, template: int = 0) -> Locator:
    """The first container of a document's template-th pod template (a RayService's or
    RayCluster's head is 0, its first worker group 1)."""

    def locate(f: Files) -> dict[str, Any]:
        specs = [spec for _, spec in pod_specs(k8s(kind, name)(f))]
        return specs[template]["containers"][0]

    return locate


FIELDS: Locator = vars  # the Files' own fields: "dockerfile", "scale_out", "kustomization"
SERVE, SERVE_CONFIG = k8s("RayService"), ("spec", "serveConfigV2")
SERVE_WORKER, GPU_WORKER = pod("RayService", template=1), pod("RayCluster", template=1)
INGEST, DERIVE = k8s("Deployment", "pagellm-ingest"), pod("Deployment", "pagellm-derive")
LEARNER = (k8s("ConfigMap", "pagellm-learner"), ("data", "learner.json"))
SHELL_TYPO = Mistake("shell_typo", compose("retrain"), ("command", 0), Edit("-loop", "loop"))

MISTAKES: dict[str, list[Mistake]] = {
    "commands parse": [
        Mistake("typo_flag", pod("Deployment", "pagellm-ingest"), ("args", 1), "--idd"),
        SHELL_TYPO,
    ],
    "expected commands": [SHELL_TYPO],
    "env": [
        Mistake("unknown", compose("serving"), ("environment", "PAGELLM_SERVE_PORTT"), "8000"),
        Mistake("invalid", k8s("ConfigMap", "pagellm-env"), ("data", "PAGELLM_PARTITIONS"), "0"),
    ],
    "topics": [
        Mistake("unknown", k8s("KafkaTopic", "pagellm.events"), ("metadata", "name"), "events"),
        Mistake(
            "uncompacted",
            k8s("KafkaTopic", "pagellm.catalogue"),
            ("spec", "config", "cleanup.policy"),
        ),
        Mistake("dlq_typo", k8s("ConfigMap"), ("data", "PAGELLM_DEAD_LETTER_TOPIC"), "pagellm.dlq"),
    ],
    "kafka": [
        Mistake("two_replicas", k8s("KafkaTopic", "pagellm.events.dlq"), ("spec", "replicas"), 2),
        Mistake("weak_isr", k8s("KafkaTopic"), ("spec", "config", "min.insync.replicas"), 1),
        Mistake("too_many_workers", INGEST, ("spec", "replicas"), 9),
        Mistake("partitions_differ", compose("topics"), ("command", 2), "4"),
        Mistake("more_replicas_than_brokers", compose("topics"), ("command", 4), "3"),
    ],
    "serve run": [
        Mistake("other_port", compose("serving"), ("command", 5), "8080"),
        Mistake("loopback", compose("serving"), ("command",), ["serve", "run", "--port", "8000"]),
    ],
    "ray service": [
        Mistake("no_import", SERVE, SERVE_CONFIG, Edit(":build_app", ":build")),
        Mistake("unknown_arg", SERVE, SERVE_CONFIG, Edit("max_batch_size", "batch")),
        Mistake("serve_run_arg", SERVE, SERVE_CONFIG, Edit("max_batch_size", "port")),
        Mistake("invalid_arg", SERVE, SERVE_CONFIG, Edit("replicas: 4", "replicas: 0")),
        Mistake("replicas_beyond_cpus", SERVE, SERVE_CONFIG, Edit("replicas: 4", "replicas: 9")),
        Mistake("proxy_port", SERVE, SERVE_CONFIG, Edit("port: 8000", "port: 8080")),
        Mistake("app_renamed", SERVE, SERVE_CONFIG, Edit("name: pagellm", "name: pages")),
        Mistake("no_serve_config", SERVE, SERVE_CONFIG, Edit("import_path:", "import:")),
        Mistake("head_port", pod("RayService"), ("ports", 3, "containerPort"), 8080),
        Mistake("fewer_cpus", SERVE_WORKER, ("resources", "limits", "cpu"), "1500m"),
        Mistake(
            "env_differs",
            SERVE_WORKER,
            ("env",),
            [{"name": "PAGELLM_SERVE_REPLICAS", "value": "2"}],
        ),
    ],
    "images": [
        Mistake("old_kafka", compose("kafka"), ("image",), "apache/kafka:4.3.0"),
        Mistake("other_ray", compose("ray-head"), ("image",), "rayproject/ray:2.59.0-py311"),
        Mistake("stale_platform", DERIVE, ("image",), "pagellm/platform:0.0.9"),
        Mistake("ray_service", SERVE, ("spec", "rayClusterConfig", "rayVersion"), "2.59.0"),
        Mistake("retagged", FIELDS, ("scale_out",), Edit("platform:0.1.0 .", "platform:0.2 .")),
    ],
    "dockerfile": [
        Mistake("jre", FIELDS, ("dockerfile",), Edit("--no-install-recommends", "openjdk-17-jre")),
        Mistake("not_copied", FIELDS, ("dockerfile",), Edit("COPY serving ./serving\n", "")),
    ],
    "store": [
        Mistake("elsewhere", DERIVE, ("volumeMounts", 0, "mountPath"), "/data"),
        Mistake("serving_worker_without", SERVE_WORKER, ("volumeMounts",)),
        Mistake("rwo", k8s("PersistentVolumeClaim"), ("spec", "accessModes"), ["ReadWriteOnce"]),
    ],
    "ray jobs": [
        Mistake("use_cpu", *LEARNER, '{"ray": {"use_gpu": false}}'),
        Mistake("more_workers_than_gpus", *LEARNER, '{"ray": {"workers": 2}}'),
        Mistake("no_gpus", GPU_WORKER, ("resources", "limits", "nvidia.com/gpu")),
        Mistake("elsewhere", pod("CronJob"), ("command", 4), "http://pagellm-x-head-svc:8265"),
    ],
    "ray addresses": [
        Mistake(
            "not_a_head", compose("retrain"), ("environment", "RAY_ADDRESS"), "ray-worker:6379"
        ),
    ],
    "kustomization": [Mistake("unlisted", FIELDS, ("kustomization", "resources", -1))],
}
CASES = [(check, mistake) for check, mistakes in MISTAKES.items() for mistake in mistakes]


@pytest.mark.parametrize(("check", "mistake"), CASES, ids=[f"{c}-{m.name}" for c, m in CASES])
def test_a_check_finds_its_mistake(files: Files, check: str, mistake: Mistake) -> None:
    broken = copy.deepcopy(files)
    mistake.make(broken)
    assert CHECKS[check](broken), f"{check} did not notice {mistake.name}"


def test_every_check_has_a_mistake() -> None:
    assert MISTAKES.keys() == CHECKS.keys()
