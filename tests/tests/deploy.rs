//! What ships beside the binary, checked by the tools that will read it:
//! Prometheus' alert rules with `promtool check rules` and their unit tests with
//! `promtool test rules`; the systemd unit with `systemd-analyze verify` and
//! `security`; the Kubernetes manifests with `kubernetes-validate`; the Grafana
//! dashboard's queries and the alert rules with a real Prometheus server scraping
//! a real daemon. The files are compiled in. Nothing here depends on the kernel's
//! version, so the kernel matrix leaves these tests to the host.
use std::path::Path;

use breaker_lab::{
    privileges,
    testing::{self, Scratch},
};

const RULES: &str = include_str!("../../deploy/prometheus/breaker-rules.yml");
const RULE_TESTS: &str = include_str!("../../deploy/prometheus/breaker-rules.test.yml");
const UNIT: &str = include_str!("../../deploy/systemd/breaker.service");
/// The exposure `systemd-analyze security` may give the unit at most (0 best, 10
/// worst; "OK" up to 4.9). Measured 2.8 with systemd 252.
const MAX_EXPOSURE: f64 = 3.0;

/// `promtool ARGS` in `dir`: its exit status and everything it printed.
fn promtool(promtool: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let Some(tool) = privileges::needs_tool("promtool rules", testing::promtool()) else {
        return;
    };
    let dir = Scratch::new("deploy-the_alert_rules_are_valid_and_pass_their_unit_tests");
    std::fs::write(dir.path().join("breaker-rules.yml"), RULES).unwrap();
    std::fs::write(dir.path().join("breaker-rules.test.yml"), RULE_TESTS).unwrap();
    let (ok, said) = promtool(&tool, dir.path(), &["check", "rules", "breaker-rules.yml"]);
    assert!(ok && said.contains("SUCCESS: 8 rules found"), "{said}");
    let (ok, said) = promtool(
        &tool,
        dir.path(),
        &["test", "rules", "breaker-rules.test.yml"],
    );
    assert!(ok && said.contains("SUCCESS"), "{said}");
    // Every alert of the rules has a unit test.
    for line in RULES.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                RULE_TESTS.contains(&format!("alertname: {alert}\n")),
                "alert {alert} has no unit test"
            );
        }
    }
}

/// A rule file with a mistake is refused: the check above could fail.
#[test]
fn promtool_refuses_a_broken_rule() {
    let Some(tool) = privileges::needs_tool("promtool rules", testing::promtool()) else {
        return;
    };
    let dir = Scratch::new("deploy-promtool_refuses_a_broken_rule");
    let broken = RULES.replacen(
        "expr: breaker_cgroup_attached == 0",
        "expr: breaker_cgroup_attached ==",
        1,
    );
    assert_ne!(broken, RULES);
    std::fs::write(dir.path().join("breaker-rules.yml"), broken).unwrap();
    let (ok, said) = promtool(&tool, dir.path(), &["check", "rules", "breaker-rules.yml"]);
    assert!(!ok, "{said}");
}

/// The unit with its `/usr/bin/breaker` pointing at the built binary (verify
/// checks that each command exists), written as `breaker.service` in `dir`.
fn unit_in(dir: &Path, text: &str) -> std::path::PathBuf {
    let breaker = breaker_lab::lab::find_breaker_bin().expect("the breaker binary");
    let path = dir.join("breaker.service");
    let text = text.replace("/usr/bin/breaker", breaker.to_str().expect("a UTF-8 path"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(analyze) = privileges::needs_tool("systemd unit", testing::on_path("systemd-analyze"))
    else {
        return;
    };
    let dir = Scratch::new("deploy-the_systemd_unit_verifies_and_is_hardened");
    let unit = unit_in(dir.path(), UNIT);
    let out = std::process::Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
    let out = std::process::Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for breaker.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{report}"
    );
    for (setting, why) in [
        ("ExecReload=", "systemctl reload re-reads the config"),
        ("Restart=on-failure", "a crash restarts it"),
    ] {
        assert!(UNIT.contains(setting), "{setting}: {why}");
    }
}

/// The unit's commands, as the binary parses them: ExecStartPre checks a config
/// (a valid one passes), and ExecStart's arguments are the daemon's (it gets as
/// far as reading the config file, which is not there).
#[test]
fn the_units_commands_are_the_binarys() {
    let breaker = breaker_lab::lab::find_breaker_bin().expect("the breaker binary");
    let command = |key: &str| -> Vec<String> {
        let line = UNIT
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"));
        let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert_eq!(words[0], "/usr/bin/breaker", "{line}");
        words.remove(0);
        words
    };
    let dir = Scratch::new("deploy-the_units_commands_are_the_binarys");
    let config = dir.path().join("breaker.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"api\"\nendpoints = [\"10.0.0.1:80\"]\n",
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| {
                if a == "/etc/breaker/breaker.toml" {
                    config.display().to_string()
                } else {
                    a
                }
            })
            .collect();
        std::process::Command::new(&breaker)
            .args(&args)
            .output()
            .unwrap()
    };
    let pre = run(command("ExecStartPre="));
    assert!(pre.status.success(), "ExecStartPre: {pre:?}");
    std::fs::remove_file(&config).unwrap();
    let start = run(command("ExecStart="));
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert!(
        stderr.contains(&format!("cannot read config {}", config.display())),
        "ExecStart's arguments: {stderr}"
    );
}

/// verify does fail: a unit whose command does not exist is refused.
#[test]
fn systemd_analyze_refuses_a_broken_unit() {
    let Some(analyze) = privileges::needs_tool("systemd unit", testing::on_path("systemd-analyze"))
    else {
        return;
    };
    let dir = Scratch::new("deploy-systemd_analyze_refuses_a_broken_unit");
    let unit = unit_in(
        dir.path(),
        &UNIT.replace(
            "ExecStart=/usr/bin/breaker",
            "ExecStart=/nonexistent/breaker",
        ),
    );
    let out = std::process::Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

/// The Kubernetes manifests, one file per object.
const MANIFESTS: &[(&str, &str)] = &[
    (
        "00-namespace.yaml",
        include_str!("../../deploy/kubernetes/00-namespace.yaml"),
    ),
    (
        "01-serviceaccount.yaml",
        include_str!("../../deploy/kubernetes/01-serviceaccount.yaml"),
    ),
    (
        "02-configmap.yaml",
        include_str!("../../deploy/kubernetes/02-configmap.yaml"),
    ),
    (
        "03-service.yaml",
        include_str!("../../deploy/kubernetes/03-service.yaml"),
    ),
    (
        "04-daemonset.yaml",
        include_str!("../../deploy/kubernetes/04-daemonset.yaml"),
    ),
];
/// Run after the DaemonSet is deleted, to remove the pins from every node.
const UNINSTALL: &str = include_str!("../../deploy/kubernetes/uninstall/breaker-uninstall.yaml");
const DOCKERFILE: &str = include_str!("../../deploy/docker/Dockerfile");
/// The Kubernetes versions the manifests are validated against: the oldest they
/// need (1.30 brought `appArmorProfile`) and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// `kubernetes-validate --strict` (unknown fields are errors) on `files` in `dir`
/// for one Kubernetes version: whether it passed, and what it said.
fn kubernetes_validate(tool: &Path, dir: &Path, version: &str, files: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(tool)
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .current_dir(dir)
        .output()
        .expect("running kubernetes-validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let Some(tool) = privileges::needs_tool("kubernetes manifests", testing::kubernetes_validate())
    else {
        return;
    };
    let dir = Scratch::new("deploy-the_kubernetes_manifests_validate");
    let mut files = Vec::new();
    for (name, text) in MANIFESTS
        .iter()
        .chain(&[("breaker-uninstall.yaml", UNINSTALL)])
    {
        std::fs::write(dir.path().join(name), text).unwrap();
        files.push(*name);
    }
    for version in KUBERNETES_VERSIONS {
        let (ok, said) = kubernetes_validate(&tool, dir.path(), version, &files);
        assert!(ok, "Kubernetes {version}:\n{said}");
        for name in &files {
            assert!(
                said.lines()
                    .any(|l| l.contains(&format!("{name} passed")) && !l.contains("WARN")),
                "{name} against Kubernetes {version}:\n{said}"
            );
        }
    }
}

/// `kubectl apply -f deploy/kubernetes/` applies the files in the order of their
/// names: the namespace first, the DaemonSet after everything it refers to.
#[test]
fn kubectl_applies_the_manifests_in_an_order_that_works() {
    let mut names: Vec<&str> = MANIFESTS.iter().map(|(name, _)| *name).collect();
    names.sort();
    let kinds: Vec<String> = names
        .iter()
        .map(|name| {
            let text = MANIFESTS.iter().find(|(n, _)| n == name).unwrap().1;
            at(&yaml(text), &["kind"])
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "DaemonSet"
        ]
    );
    // Every file of the folder is one the test knows.
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, names);
}

/// The validation does fail: a misspelt field and a wrong type are refused.
#[test]
fn kubernetes_validate_refuses_a_broken_manifest() {
    let Some(tool) = privileges::needs_tool("kubernetes manifests", testing::kubernetes_validate())
    else {
        return;
    };
    let dir = Scratch::new("deploy-kubernetes_validate_refuses_a_broken_manifest");
    let daemonset = MANIFESTS[4].1;
    for (what, broken) in [
        (
            "a misspelt field",
            daemonset.replacen("hostNetwork: true", "hostNetwrok: true", 1),
        ),
        (
            "a string for a number",
            daemonset.replacen("containerPort: 9464", "containerPort: metrics", 1),
        ),
    ] {
        assert_ne!(broken, daemonset, "{what}");
        std::fs::write(dir.path().join("04-daemonset.yaml"), &broken).unwrap();
        let (ok, said) = kubernetes_validate(&tool, dir.path(), "1.37.0", &["04-daemonset.yaml"]);
        assert!(!ok, "{what} passed:\n{said}");
    }
}

fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).expect("a YAML manifest")
}

/// `value` at a path of map keys and list indices, as a string (numbers too).
fn at(value: &serde_yaml_ng::Value, path: &[&str]) -> String {
    let mut v = value;
    for key in path {
        v = match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[*key],
        };
    }
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        other => panic!("{path:?} is {other:?}"),
    }
}

/// The pieces of the Kubernetes deployment agree with each other and with the
/// binary: the ConfigMap's config passes `breaker check-config`; the DaemonSet
/// runs the binary the image installs from the .deb, on that config, with the
/// systemd unit's capabilities, and probes and scrapes the port the config
/// listens on; the image tag is the package's version.
#[test]
fn the_kubernetes_pieces_agree_with_each_other_and_the_binary() {
    let breaker = breaker_lab::lab::find_breaker_bin().expect("the breaker binary");
    let dir = Scratch::new("deploy-the_kubernetes_pieces_agree");
    let config_map = yaml(MANIFESTS[2].1);
    let service = yaml(MANIFESTS[3].1);
    let daemonset = yaml(MANIFESTS[4].1);
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The ConfigMap's config is valid, and listens where Kubernetes looks.
    let config_text = at(&config_map, &["data", "breaker.toml"]);
    let config = dir.path().join("breaker.toml");
    std::fs::write(&config, &config_text).unwrap();
    let out = std::process::Command::new(&breaker)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "the ConfigMap's config: {out:?}");
    let listen = config_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics_listen = "))
        .expect("the ConfigMap sets metrics_listen");
    let port = listen.trim_matches('"').rsplit(':').next().unwrap();
    assert_eq!(at(container, &["ports", "0", "containerPort"]), port);
    assert_eq!(at(&service, &["spec", "ports", "0", "port"]), port);
    // Scraped through the Service only: annotating the pods too would have each
    // daemon scraped twice under one instance (and the rules' joins fail).
    assert_eq!(
        at(&service["metadata"], &["annotations", "prometheus.io/port"]),
        port
    );
    assert!(
        daemonset["spec"]["template"]["metadata"]["annotations"].is_null(),
        "the pods carry no scrape annotations"
    );
    assert_eq!(
        at(&service, &["spec", "selector", "app.kubernetes.io/name"]),
        at(
            &daemonset,
            &[
                "spec",
                "template",
                "metadata",
                "labels",
                "app.kubernetes.io/name"
            ]
        )
    );
    // Ready while protecting; alive while answering (a missing cgroup is
    // repaired by the running daemon, never by a restart).
    assert_eq!(
        at(container, &["readinessProbe", "httpGet", "path"]),
        "/healthz"
    );
    assert_eq!(
        at(container, &["livenessProbe", "tcpSocket", "port"]),
        "metrics"
    );

    // The command is the binary's: it gets as far as reading the config file,
    // which is where the ConfigMap is mounted.
    let command: Vec<String> = container["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(command[0], "/usr/bin/breaker");
    let config_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the config mount");
    assert_eq!(
        Path::new(&at(config_mount, &["mountPath"])).join("breaker.toml"),
        Path::new(&command[3])
    );
    std::fs::remove_file(&config).unwrap();
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| a.replace("/etc/breaker/breaker.toml", config.to_str().unwrap()))
        .collect();
    let out = std::process::Command::new(&breaker)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("cannot read config {}", config.display())),
        "the DaemonSet's arguments: {out:?}"
    );

    // The unit's capabilities, no more.
    let added: Vec<String> = container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| format!("CAP_{}", v.as_str().unwrap()))
        .collect();
    let bounding = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit's capabilities");
    assert_eq!(added.join(" "), bounding);
    assert_eq!(at(container, &["securityContext", "privileged"]), "false");

    // The image runs what the .deb installs, and is tagged with its version.
    let version = String::from_utf8(
        std::process::Command::new(&breaker)
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let version = version.split_whitespace().last().unwrap();
    assert_eq!(at(container, &["image"]), format!("breaker:{version}"));
    assert!(DOCKERFILE.contains(&format!("-t breaker:{version} ")));
    assert!(DOCKERFILE.contains("cargo xtask package"));
    assert!(DOCKERFILE.contains("target/debian/breaker_*.deb"));
    // The build context leaves out the build output, so that glob matches one.
    let ignore = include_str!("../../.dockerignore");
    assert!(ignore.lines().any(|l| l == "target/"), "{ignore}");
    assert!(DOCKERFILE.contains("apt-get install -y --no-install-recommends /tmp/breaker.deb"));
    assert!(DOCKERFILE.contains(r#"ENTRYPOINT ["/usr/bin/breaker"]"#));
    assert!(DOCKERFILE.contains(r#"CMD ["run", "--config", "/etc/breaker/breaker.toml"]"#));

    // The uninstaller runs the same image's `breaker uninstall` on the node's
    // bpffs, where the default pin folder is.
    let uninstall = yaml(UNINSTALL);
    let init = &uninstall["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(at(init, &["image"]), format!("breaker:{version}"));
    assert_eq!(init["command"][0], "/usr/bin/breaker");
    assert_eq!(init["command"][1], "uninstall");
    assert_eq!(at(init, &["volumeMounts", "0", "mountPath"]), "/sys/fs/bpf");

    // The node's bpffs holds the default pin folder, and the control socket's
    // folder is the node's.
    let mounts: Vec<String> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| at(m, &["mountPath"]))
        .collect();
    for needed in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/run/breaker",
        "/etc/breaker",
    ] {
        assert!(mounts.iter().any(|m| m == needed), "{needed}: {mounts:?}");
    }
}

const DASHBOARD: &str = include_str!("../../deploy/grafana/breaker-dashboard.json");

/// A panel's (or an annotation's) query as Prometheus gets it from Grafana: every
/// host, and a rate window that holds several of the test's 1 s scrapes.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$__rate_interval", "30s")
}

/// Every query of the dashboard: (panel title, PromQL).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title").to_string();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a target's expr");
            queries.push((title.clone(), grafana_to_promql(expr)));
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
    {
        if let Some(expr) = annotation["expr"].as_str() {
            let name = annotation["name"].as_str().unwrap_or("annotation");
            queries.push((name.to_string(), grafana_to_promql(expr)));
        }
    }
    queries
}

/// The dashboard is well formed for Grafana: unique panel ids, each panel placed
/// on the 24-column grid with a known type and a query on the data source
/// variable; the panels the shipping issue asks for are there.
#[test]
fn the_dashboard_is_well_formed() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id"
        );
        assert!(
            ["stat", "timeseries", "state-timeline", "bargauge"]
                .contains(&panel["type"].as_str().expect("a type")),
            "{title}: type"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: grid"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(!panel["targets"].as_array().unwrap().is_empty(), "{title}");
    }
    let all: String = dashboard_queries()
        .into_iter()
        .map(|(_, q)| q + "\n")
        .collect();
    for metric in [
        "breaker_state",
        "breaker_connect_attempts_total",
        "breaker_connect_failures_total",
        "breaker_connects_rejected_total",
        "breaker_connects_redirected_total",
        "breaker_transitions_total",
        "breaker_probes_total",
        "breaker_default_policy_destinations",
        "breaker_map_entries",
        "breaker_program_run_seconds_total",
    ] {
        assert!(all.contains(metric), "no panel shows {metric}");
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "instance"]);
}

/// `s` percent-encoded for a URL's query string.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the test's Prometheus listens, inside the lab's client namespace (where
/// the daemon's metrics listener is).
const PROMETHEUS: &str = "127.0.0.1:9090";

/// A GET of Prometheus' HTTP API `path`, from the client namespace: its `data`.
fn prometheus_api(lab: &breaker_lab::lab::Lab, path: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    let body = lab.client.within(move || -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &PROMETHEUS.parse()?,
            std::time::Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    })??;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    anyhow::ensure!(answer["status"] == "success", "{path}: {body}");
    Ok(answer["data"].clone())
}

/// The instant vector `expr` evaluates to now.
fn prom_query(lab: &breaker_lab::lab::Lab, expr: &str) -> Vec<serde_json::Value> {
    prometheus_api(lab, &format!("/api/v1/query?query={}", url_encode(expr)))
        .ok()
        .and_then(|d| d["result"].as_array().cloned())
        .unwrap_or_default()
}

/// The state (`pending` or `firing`) of the alert `name` for `upstream`, if active.
fn alert_state(lab: &breaker_lab::lab::Lab, name: &str, upstream: &str) -> Option<String> {
    let data = prometheus_api(lab, "/api/v1/alerts").ok()?;
    data["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"]["upstream"] == upstream)
        .and_then(|a| a["state"].as_str().map(String::from))
}

/// The Prometheus server, killed when the test ends however it ends.
struct PrometheusServer(std::process::Child);

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real Prometheus server (Debian's, unpacked by setup) scrapes a real daemon
/// in the lab every second with the shipped alert rules loaded: during a trip,
/// every dashboard query and every metric the rules name return data, every rule
/// evaluates without error, and BreakerOpen goes pending, then fires after its
/// minute; after the upstream recovers, it resolves.
#[test]
fn a_real_prometheus_shows_the_dashboard_and_fires_and_resolves_the_open_alert() {
    use std::time::Duration;
    let Some(prometheus) = privileges::should_run_with("prometheus", testing::prometheus()) else {
        return;
    };
    let Some(mut lab) = testing::lab("prometheus", env!("CARGO_BIN_EXE_breaker-lab")) else {
        return;
    };
    let scratch = Scratch::new("deploy-a_real_prometheus");
    // Program run stats, for the kernel cost panel; as they were when it ends.
    let _stats = breaker_lab::bench::StatsEnabled::on().expect("bpf_stats_enabled");
    let up = breaker_lab::lab::UPSTREAM_V4;
    lab.serve(&format!("{up}:8081"), "fallback").unwrap();
    // api: refused (nobody listens on 8080) until the test serves it; probed every
    // second once open for 3 s. pay: open for good, its connects redirected.
    let config = format!(
        "[[upstream]]\nname = \"api\"\nendpoints = [\"{up}:8080\"]\nfailure_threshold = 1\nopen_duration = \"3s\"\nprobe_interval = \"1s\"\n\
         [[upstream]]\nname = \"pay\"\nendpoints = [\"{up}:8082\"]\nfallback = \"{up}:8081\"\nfailure_threshold = 1\nopen_duration = \"1h\"\n\
         [default_policy]\nfailure_threshold = 1\n\
         [[alert]]\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"200ms\"\n"
    );
    lab.start_daemon(&config).unwrap();

    std::fs::write(scratch.path().join("breaker-rules.yml"), RULES).unwrap();
    std::fs::write(
        scratch.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - breaker-rules.yml\n\
             scrape_configs:\n  - job_name: breaker\n    static_configs:\n      - targets: [\"{}\"]\n",
            breaker_lab::lab::METRICS
        ),
    )
    .unwrap();
    let log = std::fs::File::create(scratch.path().join("prometheus.log")).unwrap();
    let server = lab
        .client
        .command(&prometheus)
        .arg(format!(
            "--config.file={}",
            scratch.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .current_dir(scratch.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    let _server = PrometheusServer(server);
    let prom_log =
        || std::fs::read_to_string(scratch.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        testing::eventually(Duration::from_secs(30), || {
            prom_query(&lab, "up{job=\"breaker\"} == 1").len() == 1
        }),
        "Prometheus never scraped the daemon:\n{}",
        prom_log()
    );

    // Trip api (rejected from then on), pay (redirected) and a default-policy
    // destination; a reload, and the alert webhook failing, give their series.
    let attempts = lab
        .client(&[
            "--to",
            &format!("{up}:8080"),
            "--count",
            "3",
            "--timeout-ms",
            "500",
        ])
        .unwrap();
    assert_eq!(
        testing::outcomes(&attempts),
        ["refused", "refused", "refused"]
    );
    lab.client(&[
        "--to",
        &format!("{up}:8082"),
        "--count",
        "3",
        "--timeout-ms",
        "500",
    ])
    .unwrap();
    lab.client(&[
        "--to",
        &format!("{up}:9"),
        "--count",
        "2",
        "--timeout-ms",
        "500",
    ])
    .unwrap();
    let reload = lab.cli(&["reload"]).unwrap();
    assert!(reload.status.success(), "{reload:?}");

    assert!(
        testing::eventually(Duration::from_secs(30), || alert_state(
            &lab,
            "BreakerOpen",
            "api"
        )
        .is_some()),
        "BreakerOpen never became pending for api"
    );
    // The rule's `for: 1m`, as shipped: api stays open (its probes fail) meanwhile.
    assert!(
        testing::eventually(Duration::from_secs(90), || alert_state(
            &lab,
            "BreakerOpen",
            "api"
        )
        .as_deref()
            == Some("firing")),
        "BreakerOpen never fired for api: {:?}",
        alert_state(&lab, "BreakerOpen", "api")
    );

    // While open: every dashboard query has data, the state timeline says open,
    // every metric the rules and panels name is scraped, and every rule evaluates.
    for (panel, query) in dashboard_queries() {
        let result = prom_query(&lab, &query);
        assert!(!result.is_empty(), "panel {panel:?}: no data for {query}");
    }
    let timeline = dashboard_queries()
        .into_iter()
        .find(|(panel, _)| panel == "Breaker state")
        .unwrap()
        .1;
    // pay never probes (open for an hour); api is half-open while a probe runs.
    let pay_state = prom_query(&lab, &timeline)
        .into_iter()
        .find(|s| s["metric"]["upstream"] == "pay")
        .map(|s| s["value"][1].clone());
    assert_eq!(
        pay_state,
        Some(serde_json::json!("2")),
        "pay's state timeline"
    );
    let mut names: Vec<String> = Vec::new();
    for text in [
        RULES.to_string(),
        dashboard_queries().into_iter().map(|(_, q)| q).collect(),
    ] {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("breaker_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            // Alert names such as BreakerOpen are capitalised; rule groups are not metrics.
            if name.len() > "breaker_".len() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        assert!(
            !prom_query(&lab, &format!("count({{__name__=\"{name}\"}})")).is_empty(),
            "{name} is named by a rule or a panel but never scraped"
        );
    }
    let rules = prometheus_api(&lab, "/api/v1/rules").unwrap();
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {}: {}",
                rule["name"], rule["lastError"]
            );
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, 8, "{rules}");

    // api comes back: the probes close it, and the alert resolves.
    lab.serve(&format!("{up}:8080"), "api").unwrap();
    assert!(
        testing::eventually(Duration::from_secs(30), || alert_state(
            &lab,
            "BreakerOpen",
            "api"
        )
        .is_none()),
        "BreakerOpen still active for api after it recovered"
    );
    assert_eq!(
        prom_query(
            &lab,
            "breaker_state{upstream=\"api\", state=\"closed\"} == 1"
        )
        .len(),
        1,
        "api closed"
    );
    // pay stays open: its alert still fires.
    assert_eq!(
        alert_state(&lab, "BreakerOpen", "pay").as_deref(),
        Some("firing")
    );
}
