//! What operators watch the daemon with. The JSON log format (`logging.format: json`):
//! every line the daemon writes parses as a JSON object, a call's lifecycle events
//! (start, answer, end with its outcome) carry the same fields with the same values as in
//! the human format, and phone numbers stay masked at `info`. The alert rules and the
//! Grafana dashboard in docs/ops/: promtool parses the rules and runs their unit tests,
//! every dashboard query parses as PromQL, and every metric name they (and the README's
//! metrics list) use is one the daemon exports.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::livekit::LiveKitServer;
use common::roomline::{self, Roomline, Setup, sipp, sipp_args};
use common::uac::{uac_answered_then_bye, uac_refused};

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";
const BLOCKED: &str = "+15550199";

// ---------------------------------------------------------------------------------------
// JSON logs

fn plan() -> String {
    format!(
        "rules:\n\
         \x20 - name: blocked\n    match:\n      called: \"{BLOCKED}\"\n    reject:\n      status: 603\n      reason: Decline\n\
         \x20 - name: logs\n    match:\n      called: \"{CALLED}\"\n    room: logs-{{caller}}\n"
    )
}

/// One answered call (the phone hangs up after a second) and one the dialplan rejects,
/// from [`CALLER`]; returns the daemon's log once both calls have ended.
fn two_calls(rl: &Roomline) -> String {
    let args = |called: &str| {
        let mut a = sipp_args(&rl.sip_addr(), false);
        a.extend(["-s".into(), called.into(), "-mi".into(), "127.0.0.1".into()]);
        a.extend(["-mp".into(), roomline::free_port().to_string()]);
        a
    };
    let answered = sipp(
        Some(&uac_answered_then_bye(CALLER, 1000)),
        &args(CALLED),
        Duration::from_secs(60),
    );
    answered.expect_success();
    let refused = sipp(
        Some(&uac_refused(CALLER, 603)),
        &args(BLOCKED),
        Duration::from_secs(30),
    );
    refused.expect_success();
    rl.assert_no_leaks(Duration::from_secs(15));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while rl.log().matches("call ended").count() < 1 || !rl.log().contains("request refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "two calls did not both end in the log:\n{}",
            rl.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rl.log()
}

/// A human-format line: (message, fields). `TIME LEVEL target: message k=v k="v w" ...`
fn parse_human(line: &str) -> Option<(String, BTreeMap<String, String>)> {
    let (_, rest) = line.split_once(": ")?;
    // the message runs up to the first ` key=`
    let bytes = rest.as_bytes();
    let mut starts = Vec::new(); // (key start, '=' index)
    let mut i = 0;
    while i < bytes.len() {
        if (i == 0 || bytes[i - 1] == b' ') && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
        {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'=' {
                starts.push((i, j));
                // skip a quoted value whole: it may contain ` x=`
                if bytes.get(j + 1) == Some(&b'"') {
                    let mut k = j + 2;
                    while k < bytes.len() && bytes[k] != b'"' {
                        k += if bytes[k] == b'\\' { 2 } else { 1 };
                    }
                    i = k + 1;
                    continue;
                }
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    let message_end = starts.first().map_or(rest.len(), |(s, _)| *s);
    let message = rest[..message_end].trim().to_string();
    let mut fields = BTreeMap::new();
    for (n, (key_start, eq)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(rest.len(), |(s, _)| *s);
        let raw = rest[eq + 1..end].trim();
        let value = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(q) => q.replace("\\\"", "\""),
            None => raw.to_string(),
        };
        fields.insert(rest[*key_start..*eq].to_string(), value);
    }
    Some((message, fields))
}

/// A JSON line's event fields as text (the envelope: timestamp, level, target, message
/// and spans, left out): (message, fields).
fn json_fields(v: &serde_json::Value) -> (String, BTreeMap<String, String>) {
    let obj = v.as_object().expect("a JSON object");
    let message = obj
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    let fields = obj
        .iter()
        .filter(|(k, _)| {
            !["timestamp", "level", "target", "message", "span", "spans"].contains(&k.as_str())
        })
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    (message, fields)
}

/// The lifecycle events of the two calls: (message, outcome) -> fields.
type Events = BTreeMap<(String, String), BTreeMap<String, String>>;

fn lifecycle(events: impl Iterator<Item = (String, BTreeMap<String, String>)>) -> Events {
    let mut out = Events::new();
    for (message, fields) in events {
        if [
            "inbound call",
            "inbound call answered",
            "call ended",
            "request refused",
        ]
        .contains(&message.as_str())
        {
            let outcome = fields
                .get("outcome")
                .or_else(|| fields.get("reason"))
                .cloned()
                .unwrap_or_default();
            assert!(
                out.insert((message.clone(), outcome), fields).is_none(),
                "{message} logged twice"
            );
        }
    }
    out
}

/// Asserts no full number of the test reaches the log.
fn assert_masked(log: &str, format: &str) {
    for number in [CALLER, CALLED, BLOCKED] {
        let digits = number.trim_start_matches('+');
        assert!(
            !log.contains(digits),
            "the {format} log shows {number} in full at info:\n{log}"
        );
    }
}

#[test]
fn json_log_lines_parse_and_carry_the_human_fields_with_numbers_masked() {
    let lk = LiveKitServer::start();
    let setup = || Setup::new(&lk).dialplan("main", &plan()).log_level("info");

    let human_log = {
        let rl = Roomline::start(setup());
        two_calls(&rl)
    };
    let json_log = {
        let rl = Roomline::start(setup().logging("  format: json\n"));
        two_calls(&rl)
    };

    // every line of the JSON log is one JSON object with the envelope fields
    let mut json_events = Vec::new();
    for (n, line) in json_log.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line:?}", n + 1));
        for key in ["timestamp", "level", "target"] {
            assert!(
                v.get(key).and_then(|x| x.as_str()).is_some(),
                "line {} has no {key}: {line}",
                n + 1
            );
        }
        json_events.push(json_fields(&v));
    }
    assert!(
        json_log.lines().count() >= 5,
        "the JSON log is too short:\n{json_log}"
    );
    let json = lifecycle(json_events.into_iter());
    let human = lifecycle(human_log.lines().filter_map(parse_human));

    let expect: Vec<(String, String)> = vec![
        ("call ended".into(), "caller_hangup".into()),
        ("inbound call".into(), String::new()),
        ("inbound call answered".into(), String::new()),
        ("request refused".into(), "rejected".into()),
    ];
    let keys = |e: &Events| e.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&human), expect, "human log:\n{human_log}");
    assert_eq!(keys(&json), expect, "JSON log:\n{json_log}");

    // the same fields, with the same values where the two calls must agree
    let varying = [
        "call_id",
        "duration_s",
        "rx_packets",
        "tx_packets",
        "jitter_ms",
        "rx_lost",
        "tx_lost",
        "tx_ticks_skipped",
        "source",
    ];
    for (event, h) in &human {
        let j = &json[event];
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            j.keys().collect::<Vec<_>>(),
            "fields of {event:?}: human {h:?}, JSON {j:?}"
        );
        for (k, hv) in h {
            if !varying.contains(&k.as_str()) {
                assert_eq!(hv, &j[k], "{k} of {event:?}: human {h:?}, JSON {j:?}");
            }
        }
        let wanted: &[&str] = if event.0 == "request refused" {
            &["source", "detail"]
        } else {
            &["call_id", "trunk"]
        };
        for &k in wanted {
            assert!(
                h.get(k).is_some_and(|v| !v.is_empty()),
                "{event:?} has no {k}: {h:?}"
            );
        }
    }
    // the lifecycle fields an operator searches by
    let start = &json[&("inbound call".to_string(), String::new())];
    assert_eq!(start["caller"], "+15*******00", "{start:?}");
    assert_eq!(start["called"], "+15****00", "{start:?}");
    assert_eq!(start["room"], "logs-+15*******00", "{start:?}");
    assert_eq!(start["rule"], "logs", "{start:?}");
    let ended = &json[&("call ended".to_string(), "caller_hangup".to_string())];
    assert_eq!(ended["answered"], "true", "{ended:?}");
    assert_eq!(ended["status"], "200", "{ended:?}");
    // the dialplan's refusal names its rule
    let rejected = &json[&("request refused".to_string(), "rejected".to_string())];
    assert_eq!(rejected["detail"], "rule=blocked", "{rejected:?}");
    assert_eq!(rejected["status"], "603", "{rejected:?}");
    assert_eq!(rejected["count"], "1", "{rejected:?}");

    assert_masked(&human_log, "human");
    assert_masked(&json_log, "JSON");
}

// ---------------------------------------------------------------------------------------
// Dashboards and alerts

fn ops_dir() -> PathBuf {
    common::repo_root().join("docs").join("ops")
}

fn promtool() -> PathBuf {
    common::tool_path(
        "ROOMLINE_PROMTOOL",
        common::tools_dir().join("bin").join("promtool"),
        "promtool",
    )
}

/// Runs promtool in `dir`; panics with its output unless it succeeds.
fn promtool_ok(dir: &Path, args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metrics src/ops/metrics.rs declares: name -> kind (counter, gauge, histogram).
/// Every name constant must have a `describe_<kind>!` call.
fn declared_metrics() -> BTreeMap<String, String> {
    let src = std::fs::read_to_string(common::repo_root().join("src/ops/metrics.rs")).unwrap();
    let consts =
        regex::Regex::new(r#"pub const ([A-Z_]+): &str = "(roomline_[a-z0-9_]+)";"#).unwrap();
    let describes =
        regex::Regex::new(r"describe_(counter|gauge|histogram)!\(\s*([A-Z_]+)\s*,").unwrap();
    let kinds: BTreeMap<&str, &str> = describes
        .captures_iter(&src)
        .map(|c| (c.get(2).unwrap().as_str(), c.get(1).unwrap().as_str()))
        .collect();
    let mut out = BTreeMap::new();
    for c in consts.captures_iter(&src) {
        let (constant, name) = (&c[1], &c[2]);
        let kind = kinds
            .get(constant)
            .unwrap_or_else(|| panic!("{constant} ({name}) has no describe_*! call"));
        out.insert(name.to_string(), kind.to_string());
    }
    assert!(out.len() >= 30, "too few metrics found: {out:?}");
    out
}

/// `# TYPE name kind` lines of a scrape.
fn scraped_types(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// Every `roomline_...` name in `text`.
fn roomline_names(text: &str) -> BTreeSet<String> {
    regex::Regex::new(r"\broomline_[a-z0-9_]+")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// Every PromQL expression of the dashboard (panel targets, rows' panels included), and
/// the metrics its `label_values(metric, label)` variables query.
fn dashboard_queries(dash: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    fn walk(v: &serde_json::Value, exprs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(e)) = o.get("expr") {
                    exprs.push(e.clone());
                }
                o.values().for_each(|x| walk(x, exprs));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, exprs)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dash["panels"], &mut exprs);
    let label_values = regex::Regex::new(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)").unwrap();
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["definition"].as_str())
        .filter_map(|d| label_values.captures(d).map(|c| c[1].to_string()))
        .collect();
    (exprs, vars)
}

/// Grafana's variables replaced so that promtool can parse the query: durations for
/// `$__rate_interval` and its kind, a plain value for the dashboard's own variables.
fn without_grafana_variables(expr: &str) -> String {
    let builtins = regex::Regex::new(r"\$\{?__[a-z_]+\}?").unwrap();
    let vars = regex::Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").unwrap();
    let e = builtins.replace_all(expr, "5m");
    vars.replace_all(&e, "x").into_owned()
}

/// The label values a query selects (`label="v"`, `label=~"a|b"`), except those of
/// labels the daemon does not set (job, instance) and the exporter's quantiles.
fn selected_label_values(expr: &str) -> Vec<(String, String)> {
    let m = regex::Regex::new(r#"([a-z_]+)\s*=~?\s*"([^"]*)""#).unwrap();
    let mut out = Vec::new();
    for c in m.captures_iter(expr) {
        let (label, values) = (&c[1], &c[2]);
        if ["job", "instance", "quantile"].contains(&label) || values.contains('$') {
            continue;
        }
        out.extend(
            values
                .split('|')
                .map(|v| (label.to_string(), v.to_string())),
        );
    }
    out
}

#[test]
fn dashboards_and_alerts_load_and_use_only_exported_metrics() {
    let dir = ops_dir();
    let alerts_text = std::fs::read_to_string(dir.join("roomline-alerts.yaml")).unwrap();
    let tests_text = std::fs::read_to_string(dir.join("roomline-alerts.test.yaml")).unwrap();
    let dash_text = std::fs::read_to_string(dir.join("roomline-dashboard.json")).unwrap();

    // promtool parses the rules and fires each alert on its example series
    promtool_ok(&dir, &["check", "rules", "roomline-alerts.yaml"]);
    promtool_ok(&dir, &["test", "rules", "roomline-alerts.test.yaml"]);

    let alerts: serde_json::Value = serde_saphyr::from_str(&alerts_text).expect("alerts YAML");
    let rules: Vec<&serde_json::Value> = alerts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let alert_names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for needed in [
        "RoomlineCallsRefused",
        "RoomlineTrunkDown",
        "RoomlineRegistrationLost",
        "RoomlineConfigReloadFailed",
        "RoomlineMediaLoss",
        "RoomlineDraining",
    ] {
        assert!(alert_names.contains(needed), "no alert {needed}");
    }
    // every alert has a unit test in which it fires
    let tests: serde_json::Value = serde_saphyr::from_str(&tests_text).expect("tests YAML");
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    assert_eq!(fired, alert_names, "alerts without a firing unit test");

    // every dashboard query parses as PromQL (as recording rules: YAML reads this JSON)
    let dash: serde_json::Value = serde_json::from_str(&dash_text).expect("dashboard JSON");
    let (exprs, var_metrics) = dashboard_queries(&dash);
    assert!(exprs.len() >= 25, "too few dashboard queries: {exprs:?}");
    let record: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            serde_json::json!({"record": format!("dashboard_query_{i}"), "expr": without_grafana_variables(e)})
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let rules_file = tmp.path().join("dashboard-queries.yaml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": record}]});
    std::fs::write(&rules_file, doc.to_string()).unwrap();
    promtool_ok(tmp.path(), &["check", "rules", "dashboard-queries.yaml"]);

    // what the daemon exports: its scrape, and the names src/ops declares
    let declared = declared_metrics();
    let lk = LiveKitServer::start();
    let rl = Roomline::start(Setup::new(&lk));
    // a readiness check probes LiveKit: the probe's histogram shows how they are exported
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rl.get("/health/ready").map(|(s, _)| s) != Some(200) {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, scrape) = rl.get("/metrics").expect("/metrics");
    assert_eq!(status, 200);
    let scraped = scraped_types(&scrape);
    for (name, kind) in &scraped {
        let declared_kind = declared
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exported but not declared in src/ops/metrics.rs"));
        let same = match declared_kind.as_str() {
            "histogram" => kind == "summary" || kind == "histogram",
            k => k == kind,
        };
        assert!(same, "{name}: declared {declared_kind}, exported as {kind}");
    }
    let distribution = scraped
        .get("roomline_livekit_probe_seconds")
        .unwrap_or_else(|| panic!("no LiveKit probe in the scrape:\n{scrape}"));
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for (name, kind) in &declared {
        match (kind.as_str(), distribution.as_str()) {
            ("histogram", "summary") => {
                exported.extend([name.clone(), format!("{name}_sum"), format!("{name}_count")])
            }
            ("histogram", _) => exported.extend([
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            ]),
            _ => {
                exported.insert(name.clone());
            }
        }
    }
    // every series name of the scrape is among them
    for line in scrape.lines().filter(|l| l.starts_with("roomline_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(exported.contains(name), "scraped {name} not expected");
    }

    // every metric the rules, their tests, the dashboard and the README name is exported
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    for (what, text) in [
        ("roomline-alerts.yaml", alerts_text.as_str()),
        ("roomline-alerts.test.yaml", tests_text.as_str()),
        ("roomline-dashboard.json", dash_text.as_str()),
        ("README.md", readme.as_str()),
    ] {
        let unknown: Vec<String> = roomline_names(text)
            .into_iter()
            .filter(|n| !exported.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{what} names metrics the daemon does not export: {unknown:?}"
        );
    }
    for v in &var_metrics {
        assert!(exported.contains(v), "dashboard variable queries {v}");
    }
    // ... and the only other series they select is Prometheus's own `up`
    let selector = regex::Regex::new(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{").unwrap();
    let alert_exprs: Vec<String> = rules
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    for e in exprs.iter().chain(&alert_exprs) {
        for c in selector.captures_iter(e) {
            let name = &c[1];
            assert!(
                exported.contains(name) || name == "up",
                "{name} in {e:?} is not exported"
            );
        }
    }
    // the README documents every metric
    let documented = roomline_names(&readme);
    let undocumented: Vec<&String> = declared
        .keys()
        .filter(|n| !documented.contains(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in README.md: {undocumented:?}"
    );

    // label values the queries select are ones the daemon writes (a typo never matches)
    let mut src = String::new();
    let mut stack = vec![common::repo_root().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                src.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    for e in exprs.iter().chain(&alert_exprs) {
        for (label, value) in selected_label_values(e) {
            assert!(
                src.contains(&format!("\"{value}\"")),
                "{label}=\"{value}\" in {e:?}: no such value in src/"
            );
        }
    }
}
