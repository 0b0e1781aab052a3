use super::*;

#[test]
fn records_only_measured_sends() {
    let start = Instant::now();
    let stats = Stats::new(start + Duration::from_secs(1));
    stats.on_ack(0, start, start + Duration::from_millis(5));
    stats.on_ack(
        3,
        start + Duration::from_secs(1),
        start + Duration::from_millis(1002),
    );
    let (ack, _) = stats.merged();
    assert_eq!(ack.len(), 1);
    assert!((1990..=2010).contains(&ack.max()));
    assert_eq!(stats.acked_total.load(Relaxed), 2);
}

#[test]
fn formats_a_report() {
    let report = Report {
        setup: "2 senders".into(),
        window_secs: 10.0,
        sent: 1000,
        acked: 990,
        unacked_at_end: 10,
        ack: Some(Latency {
            count: 990,
            p50_us: 1500,
            p99_us: 9000,
            p999_us: 12000,
            max_us: 20000,
        }),
        errors: BTreeMap::from([("overloaded".to_string(), 3)]),
        pushes: 500,
        delivery: None,
        procs: vec![ProcReport {
            pid: 7,
            cpu_percent: Some(150.0),
            max_rss_bytes: Some(3 << 20),
        }],
        synced: Synced::Delta(99.0),
    };
    let text = report.format();
    assert!(
        text.contains("990 acked of 1000 scheduled (99.0 acked/s)"),
        "{text}"
    );
    assert!(text.contains("p50 1.500 ms  p99 9.000 ms  p99.9 12.000 ms  max 20.000 ms"));
    assert!(text.contains("errors           overloaded 3"));
    assert!(text.contains("avg CPU 150.0%, max RSS 3.0 MiB"));
    assert!(text.contains("9.9/s (first node), 10.00 acked sends per synced write"));
    assert_eq!(report.to_json()["ack_latency"]["p99_ms"], 9.0);
}
