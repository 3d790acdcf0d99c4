//! The deployment examples of `deploy/`: the Kubernetes manifests pass the offline
//! schema check of PyPI's `kubernetes-validate` (which `scripts/test` installs), and
//! what they give switchyard (its configuration, a job file) loads; the systemd unit
//! passes `systemd-analyze verify`.

mod common;

use std::path::Path;
use std::process::Command;

const MANIFESTS: &str = "deploy/kubernetes/switchyard.yaml";
const UNIT: &str = "deploy/systemd/switchyard@.service";

fn repo(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `python3 -m kubernetes_validate --strict FILE`: `(passed, output)`.
fn kubernetes_validate(file: &Path) -> (bool, String) {
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(file)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: python3 -m pip install --user kubernetes-validate (scripts/test does)"
    );
    (output.status.success(), text)
}

/// The manifests' documents, as JSON (through PyYAML, which kubernetes-validate uses).
fn documents() -> Vec<serde_json::Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo(MANIFESTS))
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn document<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {MANIFESTS}"))
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_check_and_a_broken_one_does_not() {
    let (passed, output) = kubernetes_validate(&repo(MANIFESTS));
    assert!(passed, "{output}");
    for kind in ["configmap", "secret", "deployment", "service"] {
        assert!(
            output.contains(&format!("passed for resource {kind}/")),
            "{output}"
        );
    }
    // The check can fail: a misspelt field of the Deployment is caught.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = common::read(&repo(MANIFESTS)).replace("replicas: 3", "replica: 3");
    std::fs::write(&broken, text).unwrap();
    let (passed, output) = kubernetes_validate(&broken);
    assert!(!passed, "{output}");
    assert!(output.contains("replica"), "{output}");
}

#[test]
fn the_kubernetes_example_s_configuration_and_job_load() {
    let docs = documents();
    let deployment = document(&docs, "Deployment", "switchyard");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "--config",
            "/etc/switchyard/switchyard.toml",
            "--worker-id",
            "$(POD_NAME)"
        ]
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let service = document(&docs, "Service", "switchyard-metrics");
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    // The configuration with the Secret's variables, as the pod gets them.
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("switchyard.toml");
    let config_map = document(&docs, "ConfigMap", "switchyard-config");
    std::fs::write(
        &config_file,
        config_map["data"]["switchyard.toml"].as_str().unwrap(),
    )
    .unwrap();
    let secret = document(&docs, "Secret", "switchyard-secrets");
    let env: Vec<(String, String)> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let config = switchyard::config::Config::load_with_env(Some(&config_file), env).unwrap();
    assert!(config.state.url.expose().starts_with("postgres://"));
    let jobs = document(&docs, "ConfigMap", "switchyard-jobs");
    for (name, text) in jobs["data"].as_object().unwrap() {
        switchyard::job::load_text(Path::new(name), text.as_str().unwrap(), &config)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        common::skip(
            "the_systemd_unit_passes_systemd_analyze_verify",
            "systemd-analyze is not on this machine",
        );
        return;
    };
    assert!(version.status.success());
    // An instance of the template, its binary the one built here.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("switchyard@1.service");
    let text = common::read(&repo(UNIT)).replace(
        "/usr/local/bin/switchyard",
        env!("CARGO_BIN_EXE_switchyard"),
    );
    std::fs::write(&unit, text).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && text.trim().is_empty(), "{text}");
}
