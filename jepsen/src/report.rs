//! The terminal summary and the latency plot (SVG written by hand: no plotting dependency).

use crate::checker::{Op, Report, Stats, CLASSES};
use crate::history::{Type, F};
use std::fmt::Write as _;

/// The terminal summary: op counts and stats, anomalies per class, availability per fault,
/// notes and the verdict.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    summary_stats(&mut s, &r.stats);
    summary_anomalies(&mut s, r);
    summary_availability(&mut s, r);
    summary_verdict(&mut s, r);
    s
}

/// Op counts per f, sends, pushes, send latency and the final reads' ends.
fn summary_stats(s: &mut String, st: &Stats) {
    let _ = writeln!(
        s,
        "\n=== chatnode-jepsen results ({:.0} s of history) ===",
        st.duration_s
    );
    let _ = writeln!(s, "{:<12} {:>9} {:>9} {:>9}", "op", "ok", "fail", "info");
    for (f, by) in &st.ops {
        if f == "nemesis" || f == "checksum" || f == "ready" {
            continue;
        }
        let g = |k: &str| by.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>9} {:>9}",
            f,
            g("ok"),
            g("fail"),
            g("info")
        );
    }
    let _ = writeln!(
        s,
        "sends: {} distinct client_msg_ids, {} acked, {} not acked but stored (recovered), {} not acked and absent",
        st.sends_logical, st.sends_acked, st.sends_unacked_stored, st.sends_unacked_absent
    );
    let _ = writeln!(
        s,
        "pushes: {} messages on {} connections; skipped seqs filled on the connection {}, left unfilled at close {}",
        st.push_messages, st.connections, st.push_gaps_filled, st.push_gaps_unfilled_no_chance
    );
    if !st.send_latency_ms.is_empty() {
        let l = &st.send_latency_ms;
        let _ = writeln!(
            s,
            "ok send latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
            l.get("p50").unwrap_or(&0.0),
            l.get("p95").unwrap_or(&0.0),
            l.get("p99").unwrap_or(&0.0),
            l.get("max").unwrap_or(&0.0)
        );
    }
    for (conv, nodes) in &st.final_reads {
        let _ = writeln!(
            s,
            "final read {conv}: {}",
            nodes
                .iter()
                .map(|(n, l)| format!("{n}={l}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// One line per anomaly class (count and first example), and the recovered count.
fn summary_anomalies(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n{:<16} {:>7}  first example", "anomaly", "count");
    for class in CLASSES {
        let n = r.counts.get(*class).copied().unwrap_or(0);
        let example = r
            .anomalies
            .get(*class)
            .and_then(|l| l.first())
            .map(|a| format!("ops {:?}: {}", a.op_ids, a.message))
            .unwrap_or_default();
        let _ = writeln!(s, "{:<16} {:>7}  {}", class, n, truncate(&example, 140));
    }
    let _ = writeln!(
        s,
        "{:<16} {:>7}  (allowed: failed/indeterminate sends that were stored)",
        "recovered", r.recovered_count
    );
}

/// One line per fault: windows, sends by outcome, unavailability and heal-to-ok times.
fn summary_availability(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\n{:<18} {:>7} {:>7} {:>7} {:>6} {:>6} {:>8} {:>14} {:>14}",
        "fault",
        "windows",
        "sends",
        "ok",
        "fail",
        "info",
        "unavail",
        "heal→ok max ms",
        "heal→ok mean"
    );
    for (fault, a) in &r.availability {
        let _ = writeln!(
            s,
            "{:<18} {:>7} {:>7} {:>7} {:>6} {:>6} {:>7.1}% {:>14} {:>14}",
            fault,
            a.windows,
            a.sends,
            a.ok,
            a.fail,
            a.info,
            a.unavailable_fraction * 100.0,
            a.heal_to_first_ok_max_ms
                .map(|v| format!("{v:.0}"))
                .unwrap_or("-".into()),
            a.heal_to_first_ok_mean_ms
                .map(|v| format!("{v:.0}"))
                .unwrap_or("-".into()),
        );
    }
}

/// Notes, the harness error if any, and the result line.
fn summary_verdict(s: &mut String, r: &Report) {
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if let Some(e) = &r.harness_error {
        let _ = writeln!(s, "HARNESS ERROR: {e}");
    }
    let total = r.anomaly_total();
    if total == 0 && r.harness_error.is_none() {
        let _ = writeln!(s, "\nRESULT: no anomaly");
    } else if total > 0 {
        let _ = writeln!(s, "\nRESULT: {total} ANOMALIES");
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

// The plot's size and margins (px).
const W: f64 = 1200.0;
const H: f64 = 520.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
/// The latency axis, log10 of ms: 0.1 ms .. 10 s.
const Y_MIN: f64 = -1.0;
const Y_MAX: f64 = 4.0;

/// Where a time (s) and a latency (ms) go on a plot `duration` seconds wide.
struct Plot {
    duration: f64,
}

impl Plot {
    fn x(&self, t: f64) -> f64 {
        L + (t / self.duration) * (W - L - R)
    }
    fn y(&self, ms: f64) -> f64 {
        let l = ms.max(0.1).log10().clamp(Y_MIN, Y_MAX);
        T + (Y_MAX - l) / (Y_MAX - Y_MIN) * (H - T - B)
    }
}

/// Op latency over time (log scale), one dot per client op, nemesis windows shaded.
pub fn latency_svg(ops: &[Op], report: &Report) -> String {
    let plot = Plot {
        duration: workload_span(ops, report),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{L}" y="20" font-size="14">chatnode-jepsen: op latency over time (ok blue, fail red, info orange; faults shaded)</text>"##
    );
    draw_windows(&mut s, &plot, report);
    draw_axes(&mut s, &plot);
    draw_points(&mut s, &plot, ops);
    draw_legend(&mut s);
    s.push_str("</svg>\n");
    s
}

/// The workload's span in s, 2 % beyond the last client op (the final phase after it is
/// not plotted); at least 1 s.
fn workload_span(ops: &[Op], report: &Report) -> f64 {
    let last_client_ns = ops
        .iter()
        .filter(|o| o.process >= 0)
        .map(|o| {
            if o.complete_ns == u64::MAX {
                o.invoke_ns
            } else {
                o.complete_ns
            }
        })
        .max();
    last_client_ns
        .map(|ns| ns as f64 / 1e9 * 1.02)
        .unwrap_or(report.stats.duration_s)
        .max(1.0)
}

/// A shaded band and a label per fault window.
fn draw_windows(s: &mut String, plot: &Plot, report: &Report) {
    let duration = plot.duration;
    for (i, w) in report.windows.iter().enumerate() {
        if w.start_s > duration {
            continue;
        }
        let (x0, x1) = (
            plot.x(w.start_s),
            plot.x(w.end_s.clamp(w.start_s, duration)),
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{T}" width="{:.1}" height="{:.1}" fill="#f4a6a6" fill-opacity="0.35"><title>{} {} ({:.1}s-{:.1}s)</title></rect>"##,
            (x1 - x0).max(1.0),
            H - T - B,
            xml(&w.fault),
            xml(&w.targets.join(" ")),
            w.start_s,
            w.end_s
        );
        let ly = T + 10.0 + (i % 3) as f64 * 11.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{ly:.1}" font-size="9" fill="#a33">{}</text>"##,
            x0 + 2.0,
            xml(&w.fault)
        );
    }
}

/// Grid lines and labels for each power of ten of latency and each time step; the frame.
fn draw_axes(s: &mut String, plot: &Plot) {
    let duration = plot.duration;
    for e in (Y_MIN as i32)..=(Y_MAX as i32) {
        let ms = 10f64.powi(e);
        let yy = plot.y(ms);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{L}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            W - R
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            L - 6.0,
            yy + 4.0
        );
    }
    let step = nice_step(duration / 10.0);
    let mut t = 0.0;
    while t <= duration + 1e-9 {
        let xx = plot.x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{T}" y2="{:.1}" stroke="#eee"/>"##,
            H - B
        );
        let _ = writeln!(
            s,
            r##"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"##,
            H - B + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text>"##,
        (W + L) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        W - L - R,
        H - T - B
    );
}

/// One dot per client send, history and sync: every failure, and at most ~15000 ok ops
/// (evenly thinned). An op that never completed is drawn up to the plot's end.
fn draw_points(s: &mut String, plot: &Plot, ops: &[Op]) {
    let client: Vec<&Op> = ops
        .iter()
        .filter(|o| {
            o.process >= 0
                && matches!(o.f, F::Send | F::History | F::Sync)
                && o.invoke_ns != u64::MAX
        })
        .collect();
    let oks = client.iter().filter(|o| o.ty == Type::Ok).count();
    let stride = (oks / 15000).max(1);
    let mut k = 0usize;
    let end_ns = (plot.duration * 1e9) as u64;
    for o in client {
        let done = if o.completed && o.complete_ns != u64::MAX {
            o.complete_ns
        } else {
            end_ns
        };
        let ms = done.saturating_sub(o.invoke_ns) as f64 / 1e6;
        let color = match o.ty {
            Type::Ok => {
                k += 1;
                if k % stride != 0 {
                    continue;
                }
                if o.f == F::Send {
                    "#1f5fbf"
                } else {
                    "#5fa05f"
                }
            }
            Type::Fail => "#d62728",
            _ => "#ff9900",
        };
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.4" fill="{color}" fill-opacity="0.6"/>"##,
            plot.x(o.invoke_ns as f64 / 1e9),
            plot.y(ms)
        );
    }
}

/// The colours' legend, top right.
fn draw_legend(s: &mut String) {
    let legend = [
        ("#1f5fbf", "send ok"),
        ("#5fa05f", "read ok"),
        ("#d62728", "fail"),
        ("#ff9900", "info (indeterminate)"),
    ];
    for (i, (c, label)) in legend.iter().enumerate() {
        let lx = W - R - 560.0 + i as f64 * 140.0;
        let _ = writeln!(
            s,
            r##"<circle cx="{lx:.1}" cy="30" r="4" fill="{c}"/><text x="{:.1}" y="34">{label}</text>"##,
            lx + 8.0
        );
    }
}

fn nice_step(raw: f64) -> f64 {
    for s in [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0] {
        if s >= raw {
            return s;
        }
    }
    1200.0
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
