//! The chart's alerts and dashboard as files: `promtool check rules` accepts the rules,
//! `promtool test rules` fires each alert on what it is for and not on what it is not
//! (`e2e/prometheus/alerts_test.yaml`), the rendered PrometheusRule carries exactly those rules,
//! and the dashboard ConfigMap carries the dashboard. (That every panel's query has data is
//! checked by `device_story.rs`, against the pods the story runs.)
use edgevisor_e2e::Env;

const RULES: &str = "charts/edgevisor/rules/edgevisor.rules.yaml";

#[test]
fn promtool_checks_the_rules_and_each_alert_fires_on_its_case() {
    let env = Env::get();
    let check = env
        .tool("promtool", ["check", "rules", RULES])
        .run()
        .expect_ok("promtool check rules");
    assert!(check.contains("SUCCESS: 5 rules found"), "{check}");
    let test = env
        .tool(
            "promtool",
            ["test", "rules", "e2e/prometheus/alerts_test.yaml"],
        )
        .run()
        .expect_ok("promtool test rules");
    assert!(test.contains("SUCCESS"), "{test}");
    // The unit tests can fail: an alert whose threshold moved breaks them.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = std::fs::read_to_string(env.repo.join(RULES)).expect("the rules");
    let loosened = rules.replace("> 0.2", "> 0.5");
    assert_ne!(loosened, rules, "the offline threshold is in the rules");
    std::fs::write(dir.path().join("rules.yaml"), loosened).expect("write");
    let tests = std::fs::read_to_string(env.repo.join("e2e/prometheus/alerts_test.yaml"))
        .expect("the tests")
        .replace(
            "../../charts/edgevisor/rules/edgevisor.rules.yaml",
            "rules.yaml",
        );
    std::fs::write(dir.path().join("alerts_test.yaml"), tests).expect("write");
    let broken = env
        .tool(
            "promtool",
            [
                "test",
                "rules",
                &dir.path().join("alerts_test.yaml").to_string_lossy(),
            ],
        )
        .run();
    let err = broken.expect_err("promtool test rules with a moved threshold");
    assert!(err.contains("EdgevisorManyDevicesOffline"), "{err}");
}

#[test]
fn the_chart_ships_the_rules_and_the_dashboard_when_asked() {
    let env = Env::get();
    let docs = env.helm_template([
        "ev",
        "charts/edgevisor",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
    ]);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let file: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(env.repo.join(RULES)).expect("the rules"))
            .expect("YAML");
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap with the sidecar's label");
    let json: serde_json::Value = serde_json::from_str(
        dashboard["data"]["edgevisor-fleets.json"]
            .as_str()
            .expect("the dashboard's JSON"),
    )
    .expect("JSON");
    let on_disk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.repo.join(edgevisor_e2e::dashboard::DASHBOARD))
            .expect("the dashboard"),
    )
    .expect("JSON");
    assert_eq!(json, on_disk);
    // Off by default: neither needs CRDs or a Grafana the cluster may not have.
    let plain = env.helm_template(["ev", "charts/edgevisor"]);
    assert!(!plain.iter().any(|d| d["kind"] == "PrometheusRule"));
    assert!(
        !plain
            .iter()
            .any(|d| d["metadata"]["labels"]["grafana_dashboard"].is_string())
    );
}
