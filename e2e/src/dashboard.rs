//! The chart's Grafana dashboard, checked against the environment's Prometheus: every panel's
//! every query, with the dashboard's variables filled in as Grafana would, returns data over a
//! time range (a story's). Grafana itself is not needed to know a panel would be empty.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::Env;

/// The dashboard's file in the chart.
pub const DASHBOARD: &str = "charts/edgevisor/dashboards/edgevisor-fleets.json";

/// One query of one panel, and what it returned.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
    /// Series with at least one sample that is a number.
    pub series: usize,
}

/// Every panel's queries (`targets[].expr`) with `$namespace` and `$fleet` set to one fleet and
/// `$__rate_interval` to `rate_interval`.
pub fn queries(
    dashboard: &Value,
    namespace: &str,
    fleet: &str,
    rate_interval: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let mut out = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("panel {title:?} has no queries"))?;
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel {title:?}: a target without expr"))?;
            let expr = expr
                .replace("$namespace", namespace)
                .replace("$fleet", fleet)
                .replace("$__rate_interval", rate_interval);
            out.push((title.clone(), expr));
        }
    }
    Ok(out)
}

/// Runs every query of the dashboard over `[since, now]` (2 s steps) against `prometheus`;
/// fails naming the panels whose queries are invalid or return no number at all.
pub async fn check(
    env: &Env,
    namespace: &str,
    fleet: &str,
    since: SystemTime,
) -> anyhow::Result<Vec<PanelQuery>> {
    let prometheus = env
        .prometheus
        .as_deref()
        .context("the environment has no Prometheus (it runs with the node: e2e/env up)")?;
    let text = std::fs::read_to_string(env.repo.join(DASHBOARD))
        .with_context(|| format!("reading {DASHBOARD}"))?;
    let dashboard: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    // What Prometheus scraped last (every 2 s) is in by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (start, end) = (secs(since), secs(SystemTime::now()));
    let http = reqwest::Client::new();
    let mut results = Vec::new();
    let mut empty = Vec::new();
    for (panel, expr) in queries(&dashboard, namespace, fleet, "30s")? {
        let response: Value = http
            .get(format!("{prometheus}/api/v1/query_range"))
            .query(&[
                ("query", expr.as_str()),
                ("start", &start.to_string()),
                ("end", &end.to_string()),
                ("step", "2"),
            ])
            .send()
            .await
            .with_context(|| format!("asking Prometheus for {expr}"))?
            .json()
            .await
            .context("Prometheus' answer is not JSON")?;
        if response["status"] != "success" {
            bail!(
                "panel {panel:?}: Prometheus refused {expr}: {}",
                response["error"]
            );
        }
        let series = response["data"]["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .filter(|s| {
                        s["values"].as_array().is_some_and(|values| {
                            values.iter().any(|v| {
                                v[1].as_str()
                                    .and_then(|x| x.parse::<f64>().ok())
                                    .is_some_and(f64::is_finite)
                            })
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        if series == 0 {
            empty.push(format!("{panel:?}: {expr}"));
        }
        results.push(PanelQuery {
            panel,
            expr,
            series,
        });
    }
    ensure!(
        empty.is_empty(),
        "dashboard queries without data:\n  {}",
        empty.join("\n  ")
    );
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_filled_in_as_grafana_would() {
        let dashboard = serde_json::json!({"panels": [
            {"title": "a", "targets": [{"expr": "x{namespace=~\"$namespace\", fleet=~\"$fleet\"}"}]},
            {"title": "b", "targets": [{"expr": "rate(y[$__rate_interval])"}, {"expr": "z"}]},
        ]});
        let q = queries(&dashboard, "shops", "kiosks", "30s").expect("queries");
        assert_eq!(
            q,
            vec![
                (
                    "a".to_string(),
                    "x{namespace=~\"shops\", fleet=~\"kiosks\"}".to_string()
                ),
                ("b".to_string(), "rate(y[30s])".to_string()),
                ("b".to_string(), "z".to_string()),
            ]
        );
        let no_targets = serde_json::json!({"panels": [{"title": "c", "targets": []}]});
        assert!(queries(&no_targets, "n", "f", "1m").is_err());
    }
}
