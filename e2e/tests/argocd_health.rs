//! The Argo CD health checks of `e2e/argocd/resource_customizations/<group>/<kind>/health.lua`,
//! run by the real Lua interpreter and checked as Argo CD's own harness checks the checks it ships
//! (`util/lua/health_test.go`): every `health_test.yaml` next to a `health.lua` lists fixtures
//! (`inputPath`, a whole object) and the exact `healthStatus` (`status` and `message`) the
//! script must return for each.
//!
//! Argo CD decodes the object from JSON into a Lua table, sets it as the global `obj`, runs the
//! script as a chunk and reads the table it returns; a status outside Healthy, Progressing,
//! Suspended, Degraded, Missing and Unknown becomes Unknown, "Lua returned an invalid health
//! status". Here there is no JSON library for Lua, so the fixture is parsed in Rust and written
//! into the driver as a Lua table literal, and `lua5.4` runs the driver. The script gets what a
//! check from `argocd-cm` gets by default (`useOpenLibs` unset): the base library, `table` and
//! `os.time`/`os.date`, and no `string` library, not even as string methods. Argo CD's Lua
//! (gopher-lua) is Lua 5.1, so the environment also leaves out what 5.1 lacks (`table.pack`,
//! `table.unpack`, `table.move`); syntax new in 5.4 would still slip through.
//!
//! The chart's README shows the `argocd-cm` entries that install the checks; a test holds them to
//! the scripts, byte for byte.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use edgevisor_crds::{Device, Fleet};
use serde::Deserialize;
use serde_json::{Value, json};

/// The health statuses Argo CD accepts from a script.
const HEALTH_STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Suspended",
    "Degraded",
    "Missing",
    "Unknown",
];

/// The driver `lua5.4 -` runs; `obj` and `source` are prepended.
const DRIVER: &str = r##"
local base = {
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
  "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "xpcall",
}
local env = {
  obj = obj,
  table = { concat = table.concat, insert = table.insert, remove = table.remove, sort = table.sort },
  os = { time = os.time, date = os.date },
  unpack = table.unpack,
  _VERSION = "Lua 5.1",
}
for _, name in ipairs(base) do
  env[name] = _G[name]
end
-- Standard output carries the result; what a script prints goes to standard error.
env.print = function(...)
  local parts = { ... }
  for i = 1, select("#", ...) do
    parts[i] = tostring(parts[i])
  end
  io.stderr:write(table.concat(parts, "\t"), "\n")
end
env._G = env
local write, exit = io.write, os.exit
-- No string library: not by name (it is not in env) and not as methods of strings.
getmetatable("").__index = nil
local chunk, err = load(source, "=health.lua", "t", env)
if chunk == nil then
  write("error\n", err)
  exit(0)
end
local ok, hs = pcall(chunk)
if not ok then
  write("error\n", tostring(hs))
  exit(0)
end
if type(hs) ~= "table" then
  write("error\nexpect table output from Lua script, not ", type(hs))
  exit(0)
end
for _, field in ipairs({ "status", "message" }) do
  if hs[field] ~= nil and type(hs[field]) ~= "string" then
    write("error\n", field, " is a ", type(hs[field]), ", not a string")
    exit(0)
  end
end
write("ok\n", hs.status or "", "\n", hs.message or "")
"##;

/// What a health script returned.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct HealthStatus {
    status: String,
    #[serde(default)]
    message: String,
}

/// A `health_test.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

/// One `<group>/<kind>` directory with a `health.lua`.
struct Check {
    group: String,
    kind: String,
    dir: PathBuf,
}

impl Check {
    fn script(&self) -> String {
        read(&self.dir.join("health.lua"))
    }

    fn tests(&self) -> Vec<HealthTest> {
        let path = self.dir.join("health_test.yaml");
        let tests: HealthTests = serde_norway::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{} is not a health_test.yaml: {e}", path.display()));
        tests.tests
    }

    fn fixture(&self, input_path: &str) -> Value {
        let path = self.dir.join(input_path);
        serde_norway::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{} is not one object: {e}", path.display()))
    }

    fn name(&self) -> String {
        format!("{}/{}", self.group, self.kind)
    }
}

fn customizations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("argocd/resource_customizations")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
        .map(|entry| entry.expect("reading a directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every `<group>/<kind>/health.lua`, as Argo CD lays out its built-in checks.
fn checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for group in dirs(&customizations()) {
        for kind in dirs(&group) {
            if kind.join("health.lua").is_file() {
                let name = |p: &Path| {
                    p.file_name()
                        .expect("a directory has a name")
                        .to_string_lossy()
                        .into_owned()
                };
                checks.push(Check {
                    group: name(&group),
                    kind: name(&kind),
                    dir: kind,
                });
            }
        }
    }
    checks
}

// === The Lua side ===

/// Writes `value` as a Lua expression: the table Argo CD would decode from its JSON.
fn lua_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => write!(out, "{i}").expect("writing to a String"),
            (None, Some(f)) => write!(out, "{f:?}").expect("writing to a String"),
            (None, None) => panic!("{n} is not a number Lua can hold"),
        },
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Object(fields) => {
            out.push('{');
            for (key, item) in fields {
                out.push('[');
                lua_string(key, out);
                out.push_str("] = ");
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
    }
}

/// A Lua string literal that holds exactly the bytes of `s`: printable ASCII as is, everything
/// else (quotes, backslashes, control characters, UTF-8 beyond ASCII) as a three-digit `\ddd`
/// escape, which Lua 5.1 and 5.4 read alike.
fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for byte in s.bytes() {
        match byte {
            b'"' | b'\\' => write!(out, "\\{:03}", byte).expect("writing to a String"),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => write!(out, "\\{:03}", byte).expect("writing to a String"),
        }
    }
    out.push('"');
}

/// Runs `script` on `object` as Argo CD does; `Err` carries the Lua error Argo CD would report.
fn run_health(script: &str, object: &Value) -> Result<HealthStatus, String> {
    let mut program = String::from("obj = ");
    lua_literal(object, &mut program);
    program.push_str("\nlocal source = ");
    lua_string(script, &mut program);
    program.push_str(DRIVER);

    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run lua5.4 ({e}); install it: apt-get install lua5.4 (e2e/env up does)")
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(program.as_bytes())
        .expect("writing the driver to lua5.4");
    let output = child.wait_with_output().expect("waiting for lua5.4");
    let stdout = String::from_utf8(output.stdout).expect("lua5.4 printed UTF-8");
    assert!(
        output.status.success(),
        "the driver itself failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (outcome, rest) = stdout
        .split_once('\n')
        .unwrap_or_else(|| panic!("unexpected driver output: {stdout:?}"));
    match outcome {
        "ok" => {
            let (status, message) = rest
                .split_once('\n')
                .unwrap_or_else(|| panic!("unexpected driver output: {stdout:?}"));
            if HEALTH_STATUSES.contains(&status) {
                Ok(HealthStatus {
                    status: status.to_string(),
                    message: message.to_string(),
                })
            } else {
                Ok(HealthStatus {
                    status: "Unknown".to_string(),
                    message: "Lua returned an invalid health status".to_string(),
                })
            }
        }
        "error" => Err(rest.to_string()),
        _ => panic!("unexpected driver output: {stdout:?}"),
    }
}

// === Tests ===

#[test]
fn every_health_check_returns_what_its_tests_expect() {
    let checks = checks();
    let names: Vec<String> = checks.iter().map(Check::name).collect();
    assert_eq!(
        names,
        ["edgevisor.dev/Device", "edgevisor.dev/Fleet"],
        "the health checks under {}",
        customizations().display()
    );
    let mut failures = Vec::new();
    let mut cases = 0;
    for check in &checks {
        let script = check.script();
        let tests = check.tests();
        // Every status a user can meet is shown by at least one fixture.
        let statuses: BTreeSet<&str> = tests
            .iter()
            .map(|t| t.health_status.status.as_str())
            .collect();
        assert_eq!(
            statuses,
            BTreeSet::from(["Degraded", "Healthy", "Progressing", "Suspended"]),
            "statuses {} tests for",
            check.name()
        );
        for test in &tests {
            cases += 1;
            let object = check.fixture(&test.input_path);
            match run_health(&script, &object) {
                Ok(got) if got == test.health_status => {}
                Ok(got) => failures.push(format!(
                    "{}/{}:\n  expected {:?}\n       got {:?}",
                    check.name(),
                    test.input_path,
                    test.health_status,
                    got
                )),
                Err(e) => failures.push(format!(
                    "{}/{}: the script failed: {e}",
                    check.name(),
                    test.input_path
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} health tests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every fixture is listed by its `health_test.yaml`, and every fixture is an object the API
/// accepts: it reads as the Rust type of its kind, and that type keeps every field the fixture
/// sets (a misspelt field would be dropped, and the check would test something no controller
/// writes).
#[test]
fn fixtures_are_objects_of_their_kind_and_all_are_tested() {
    for check in checks() {
        let tested: BTreeSet<String> = check.tests().into_iter().map(|t| t.input_path).collect();
        let on_disk: BTreeSet<String> = std::fs::read_dir(check.dir.join("testdata"))
            .expect("listing testdata")
            .map(|e| {
                format!(
                    "testdata/{}",
                    e.expect("reading testdata").file_name().to_string_lossy()
                )
            })
            .collect();
        assert_eq!(tested, on_disk, "fixtures of {} vs its tests", check.name());
        for input in &tested {
            let fixture = check.fixture(input);
            let typed = match check.kind.as_str() {
                "Fleet" => {
                    serde_json::from_value::<Fleet>(fixture.clone()).and_then(serde_json::to_value)
                }
                "Device" => {
                    serde_json::from_value::<Device>(fixture.clone()).and_then(serde_json::to_value)
                }
                other => panic!("no API type for kind {other}"),
            }
            .unwrap_or_else(|e| panic!("{}/{input} is not a {}: {e}", check.name(), check.kind));
            let mut dropped = Vec::new();
            missing_from(&fixture, &typed, "", &mut dropped);
            assert!(
                dropped.is_empty(),
                "{}/{input} sets what {} does not have (or has otherwise): {dropped:?}",
                check.name(),
                check.kind
            );
        }
    }
}

/// Collects the paths of `sub` that `full` does not hold with the same value.
fn missing_from(sub: &Value, full: &Value, path: &str, out: &mut Vec<String>) {
    match (sub, full) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => missing_from(value, other, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                missing_from(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(path.to_string()),
    }
}

/// The chart's README shows the `argocd-cm` entries that install the checks; they are the scripts
/// here, byte for byte, and there is none for a script that no longer exists.
#[test]
fn chart_readme_installs_exactly_these_health_checks() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/edgevisor/README.md");
    let readme = read(&readme_path);
    let config_map = yaml_blocks(&readme)
        .into_iter()
        .filter_map(|block| serde_norway::from_str::<Value>(&block).ok())
        .find(|doc| doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "argocd-cm")
        .unwrap_or_else(|| {
            panic!(
                "{} has no ```yaml block with the argocd-cm ConfigMap",
                readme_path.display()
            )
        });
    let shown: BTreeMap<String, String> = config_map["data"]
        .as_object()
        .expect("argocd-cm has data")
        .iter()
        .filter(|(key, _)| key.starts_with("resource.customizations.health."))
        .map(|(key, value)| {
            let script = value.as_str().expect("a health check is a string");
            (key.clone(), script.to_string())
        })
        .collect();
    let expected: BTreeMap<String, String> = checks()
        .iter()
        .map(|check| {
            (
                format!(
                    "resource.customizations.health.{}_{}",
                    check.group, check.kind
                ),
                check.script(),
            )
        })
        .collect();
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "health checks in {}",
        readme_path.display()
    );
    for (key, script) in &expected {
        assert!(
            &shown[key] == script,
            "{key} in {} differs from the script; paste the current health.lua there",
            readme_path.display()
        );
    }
}

/// The contents of every fenced ```yaml block of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

// === The harness itself ===

/// Strings reach the script unchanged, whatever they hold; numbers stay whole numbers.
#[test]
fn objects_reach_lua_unchanged() {
    let awkward = "quote \" backslash \\ newline \n tab \t ]] [[ ' ünïcødé ✓ \u{1} 12";
    let object = json!({"metadata": {"name": awkward, "generation": 12}, "list": [1, null, 3]});
    let script = r#"return { status = "Healthy", message = obj.metadata.name .. "|" .. obj.metadata.generation .. "|" .. #obj.list }"#;
    let got = run_health(script, &object).expect("the script runs");
    assert_eq!(got.status, "Healthy");
    assert_eq!(got.message, format!("{awkward}|12|3"));
}

/// The script gets what a check in `argocd-cm` gets by default, no more: a script that needs
/// more fails here as it would in Argo CD; an invalid status reads as Argo CD reads it.
#[test]
fn scripts_get_only_what_argocd_gives_them() {
    let object = json!({"metadata": {"name": "x"}});
    for script in [
        r#"return { status = string.format("%s", "Healthy") }"#,
        r#"return { status = ("Healthy"):lower() }"#,
        r#"return { status = "Healthy", message = tostring(math.floor(1)) }"#,
        r#"return { status = "Healthy", message = io.read() }"#,
        r#"return { status = table.unpack({ "Healthy" }) }"#,
        r#"return "Healthy""#,
        r#"return { status = "Healthy", message = 3 }"#,
    ] {
        assert!(
            run_health(script, &object).is_err(),
            "{script} ran, but Argo CD would fail it"
        );
    }
    let got = run_health(r#"return { status = "Fine" }"#, &object).expect("the script runs");
    assert_eq!(
        got,
        HealthStatus {
            status: "Unknown".to_string(),
            message: "Lua returned an invalid health status".to_string()
        }
    );
    let got = run_health(
        r#"local t = {} table.insert(t, os.date("!%Y", 0)) return { status = "Healthy", message = table.concat(t) }"#,
        &object,
    )
    .expect("the script runs");
    assert_eq!(got.message, "1970");
}
