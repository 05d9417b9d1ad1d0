//! The printed table: darkleg beside both peers, then every goal of issue 15 with its figure
//! and a met / missed verdict, all from the one run's JSON document.

use serde_json::Value;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A figure for a cell: rounded, or "-" when that side did not measure it.
fn cell(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.0}"),
        _ => match v {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    }
}

fn row(what: &str, darkleg: String, bridge: String, tb: String) {
    println!("  {what:<48} {darkleg:>13} {bridge:>13} {tb:>13}");
}

fn ms_pair(v: &Value, p50: &str, p99: &str) -> String {
    format!("{} / {}", cell(&v[p50]), cell(&v[p99]))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// One goal: what it asks, what was measured, and whether that meets it (`None`: not run).
struct Goal {
    goal: String,
    figure: String,
    met: Option<bool>,
}

fn goal(goal: &str, figure: String, met: Option<bool>) -> Goal {
    Goal {
        goal: goal.to_string(),
        figure,
        met,
    }
}

/// A ratio goal `a / b ≥ want`; not run when either side is missing.
fn ratio_goal(what: &str, a: &Value, b: &Value, want: f64) -> Goal {
    let (a, b) = (num(a), num(b));
    let r = ratio(a, b);
    if r.is_nan() {
        return goal(what, "not run".into(), None);
    }
    goal(
        what,
        format!("{r:.2}× ({a:.0}/s vs {b:.0}/s)"),
        Some(r >= want),
    )
}

/// `v ≤ limit` (`at_most`) or `v ≥ limit`, with the figure in `unit`.
fn limit_goal(what: &str, v: &Value, limit: f64, at_most: bool, unit: &str) -> Goal {
    let x = num(v);
    if x.is_nan() {
        return goal(what, "not run".into(), None);
    }
    let met = if at_most { x <= limit } else { x >= limit };
    let digits = if unit == "/s" { 0 } else { 1 };
    goal(what, format!("{x:.digits$}{unit}"), Some(met))
}

/// The goals another module measured (growth, slow storage): its `goals` array of
/// `{"goal", "figure", "met"}`, or one "not run" row.
fn hook_goals(what: &str, v: &Value) -> Vec<Goal> {
    match v["goals"].as_array() {
        Some(rows) => rows
            .iter()
            .map(|g| {
                goal(
                    g["goal"].as_str().unwrap_or(what),
                    cell(&g["figure"]),
                    g["met"].as_bool(),
                )
            })
            .collect(),
        None => vec![goal(what, "not run".into(), None)],
    }
}

fn goals(doc: &Value) -> Vec<Goal> {
    let base = &doc["baseline"];
    let single = &doc["drain_single"];
    let ingest = &doc["durable_ingest"];
    let mut out = Vec::new();
    let mut drain = ratio_goal(
        "default config: drain ≥ 1.0× the bridge",
        &single["drain_per_s"],
        &base["drain_per_s"],
        1.0,
    );
    let r = ratio(num(&single["drain_per_s"]), num(&base["drain_per_s"]));
    if !r.is_nan() {
        let moon = if r >= 1.5 { "met" } else { "missed" };
        drain.figure.push_str(&format!("; moonshot 1.5× {moon}"));
    }
    out.push(drain);
    out.push(ratio_goal(
        "default config: intake ≥ 1.0× the bridge (ASCII scanners)",
        &doc["ascii_ingest"]["events_per_s"],
        &base["ingest_per_s"],
        1.0,
    ));
    out.push(limit_goal(
        "default config: peak RSS ≤ 32 MiB while draining",
        &single["peak_rss_mib"],
        32.0,
        true,
        " MiB",
    ));
    out.push(ratio_goal(
        "framed, FULL: durable ingest ≥ 3× the bridge's intake",
        &ingest["events_per_s"],
        &base["ingest_per_s"],
        3.0,
    ));
    out.push(limit_goal(
        "framed, FULL: ≥ 50k/s while publishing upstream",
        &ingest["with_upstream_up_per_s"],
        50_000.0,
        false,
        "/s",
    ));
    out.push(ratio_goal(
        "batched drain ≥ 10× the bridge",
        &doc["drain_batched"]["drain_per_s"],
        &base["drain_per_s"],
        10.0,
    ));
    for (key, when) in [
        ("steady_1000", "1,000 scans/s"),
        ("steady_1000_backlog", "1,000/s + backlog draining"),
    ] {
        let s = &doc[key];
        out.push(limit_goal(
            &format!("{when}: ack p99 ≤ 5 ms"),
            &s["ack_p99_ms"],
            5.0,
            true,
            " ms",
        ));
        out.push(limit_goal(
            &format!("{when}: scan → subscriber p99 ≤ 10 ms"),
            &s["scan_to_subscriber_p99_ms"],
            10.0,
            true,
            " ms",
        ));
    }
    if doc["steady_1000_backlog"]["backlog_still_draining_at_end"] == false {
        out.push(goal(
            "  (the backlog finished before the steady run did)",
            format!(
                "{} of {}",
                doc["steady_1000_backlog"]["backlog_drained_during_steady"],
                doc["steady_1000_backlog"]["backlog"]
            ),
            None,
        ));
    }
    out.extend(hook_goals(
        "growth: drain within 20 % at 100k/1M/10M, RSS ≤ 32 MiB, start-up ≤ 1 s",
        &doc["growth"],
    ));
    out.extend(hook_goals(
        "slow storage (10 ms fsync): ack p99 ≤ 2 fsyncs, ingest ≥ 20k/s",
        &doc["slow_storage"],
    ));
    out
}

/// Prints the comparison table and the goals.
pub fn print(doc: &Value) {
    let base = &doc["baseline"];
    let tb = &doc["thingsboard"];
    let ingest = &doc["durable_ingest"];
    let batched = &doc["drain_batched"];
    let single = &doc["drain_single"];
    println!("darkleg vs the usual edge setups — same machine, same run");
    row(
        "",
        "darkleg".into(),
        "Mosq. bridge".into(),
        "ThingsBoard".into(),
    );
    row(
        "intake, scans/s (darkleg framed, durable, FULL)",
        cell(&ingest["events_per_s"]),
        cell(&base["ingest_per_s"]),
        cell(&tb["intake_acked_per_s"]),
    );
    row(
        "  … durable (bridge: autosave; TB: in SQLite)",
        cell(&ingest["events_per_s"]),
        "-".into(),
        cell(&tb["durable_per_s"]),
    );
    row(
        "  … darkleg from plain (ASCII) scanners, durable",
        cell(&doc["ascii_ingest"]["events_per_s"]),
        "-".into(),
        "-".into(),
    );
    row(
        "  … while publishing to a live upstream",
        cell(&ingest["with_upstream_up_per_s"]),
        "-".into(),
        "-".into(),
    );
    row(
        "drain, events/s, default config (1 per message)",
        cell(&single["drain_per_s"]),
        cell(&base["drain_per_s"]),
        cell(&tb["drain_per_s"]),
    );
    row(
        "drain, events/s, batch = 100",
        cell(&batched["drain_per_s"]),
        "-".into(),
        "-".into(),
    );
    let tb_kill = match (&tb["survived_sigkill_cold"], &tb["events"]) {
        (Value::Null, _) => "-".into(),
        (s, n) => format!("{}/{} cold, {}/{n} warm", s, n, tb["survived_sigkill_warm"]),
    };
    row(
        "surviving SIGKILL during the outage",
        format!("{}/{}", batched["survived_sigkill"], batched["events"]),
        format!("{}/{}", base["survived_sigkill"], base["sigkill_backlog"]),
        String::new(),
    );
    if tb_kill != "-" {
        println!(
            "  {:<48} {tb_kill:>41}",
            "  … ThingsBoard (0.5 s after the last PUBACK)"
        );
    }
    row(
        "ack p50 / p99 at full load (ms)",
        ms_pair(ingest, "ack_p50_ms", "ack_p99_ms"),
        "-".into(),
        "-".into(),
    );
    for (key, when) in [
        ("steady_1000", "1,000/s"),
        ("steady_1000_backlog", "1,000/s + backlog"),
    ] {
        let s = &doc[key];
        row(
            &format!("{when}: ack p50 / p99 (ms)"),
            ms_pair(s, "ack_p50_ms", "ack_p99_ms"),
            "-".into(),
            "-".into(),
        );
        row(
            &format!("{when}: scan → subscriber p50 / p99 (ms)"),
            ms_pair(s, "scan_to_subscriber_p50_ms", "scan_to_subscriber_p99_ms"),
            "-".into(),
            "-".into(),
        );
    }
    let bl = &doc["steady_1000_backlog"];
    if !bl.is_null() {
        row(
            "  … backlog drained meanwhile, events/s",
            cell(&bl["backlog_drain_per_s_during_steady"]),
            "-".into(),
            "-".into(),
        );
    }
    row(
        "peak RSS, default config drain (MiB)",
        format!("{:.1}", num(&single["peak_rss_mib"])),
        "-".into(),
        "-".into(),
    );
    row(
        "peak RSS, batched drain (MiB)",
        format!("{:.1}", num(&batched["peak_rss_mib"])),
        "-".into(),
        "-".into(),
    );
    row(
        "CPU seconds per 100k events drained (batched)",
        format!("{:.2}", num(&batched["cpu_s_per_100k"])),
        "-".into(),
        "-".into(),
    );
    row(
        "start-up with the backlog (s)",
        format!("{:.2}", num(&batched["startup_s"])),
        "-".into(),
        "-".into(),
    );
    let http = &doc["http_intake"];
    if !http.is_null() {
        row(
            "HTTP intake, 100 scans a request: durable/s",
            cell(&http["batched"]["durable_scans_per_s"]),
            "-".into(),
            "-".into(),
        );
        row(
            "HTTP intake, 1,000 devices × 1/s: p50 / p99 (ms)",
            format!(
                "{:.1} / {:.1}",
                num(&http["steady"]["ack_p50_ms"]),
                num(&http["steady"]["ack_p99_ms"])
            ),
            "-".into(),
            "-".into(),
        );
        row(
            "  … all 1,000 in step (a burst a second)",
            format!(
                "{:.1} / {:.1}",
                num(&http["steady"]["in_step"]["ack_p50_ms"]),
                num(&http["steady"]["in_step"]["ack_p99_ms"])
            ),
            "-".into(),
            "-".into(),
        );
    }
    let dw = &doc["datawedge"];
    if !dw.is_null() {
        row(
            "DataWedge TCP, 500 handhelds × 1/s: stored",
            format!("{}/{}", dw["stored"], dw["lines_sent"]),
            "-".into(),
            "-".into(),
        );
    }
    if let Some(why) = tb["skipped"].as_str() {
        println!("  ThingsBoard IoT Gateway not run: {why}");
    }
    println!();
    println!("issue 15 goals, measured in this run");
    for g in goals(doc) {
        let verdict = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("  {:<72} {:<40} {verdict}", g.goal, g.figure);
    }
}
