//! Synthetic histories: one per anomaly class (each must be found), and clean ones that pass.

use super::*;
use crate::history::{Event, Msg, SyncEntry, Type, Value, F, HARNESS, NEMESIS};

const C: &str = "conv-a";

/// Builds a history with a clock that advances 1 ms per event.
#[derive(Default)]
struct H {
    events: Vec<Event>,
    t: u64,
    op: u64,
}

fn m(seq: u64, cmid: &str) -> Msg {
    Msg {
        seq,
        msg_id: Some(format!("mid-{cmid}")),
        client_msg_id: cmid.to_string(),
        sender: None,
    }
}

impl H {
    fn ev(&mut self, op: u64, process: i64, ty: Type, f: F) -> Event {
        self.t += 1_000_000;
        Event::new(op, process, ty, f, self.t)
    }
    fn next(&mut self) -> u64 {
        self.op += 1;
        self.op
    }
    /// Invokes a send; returns its op id.
    fn send_invoke(&mut self, p: i64, conn: u64, cmid: &str) -> u64 {
        let op = self.next();
        let mut e = self.ev(op, p, Type::Invoke, F::Send);
        e.conn = Some(conn);
        e.conversation = Some(C.into());
        e.client_msg_id = Some(cmid.into());
        self.events.push(e);
        op
    }
    fn send_complete(&mut self, op: u64, p: i64, conn: u64, cmid: &str, res: Result<u64, Type>) {
        let (ty, value, error) = match res {
            Ok(seq) => (
                Type::Ok,
                Some(Value {
                    seq: Some(seq),
                    msg_id: Some(format!("mid-{cmid}")),
                    ..Default::default()
                }),
                None,
            ),
            Err(t) => (t, None, Some("timeout".to_string())),
        };
        let mut e = self.ev(op, p, ty, F::Send);
        e.conn = Some(conn);
        e.conversation = Some(C.into());
        e.client_msg_id = Some(cmid.into());
        e.value = value;
        e.error = error;
        self.events.push(e);
    }
    fn send(&mut self, p: i64, conn: u64, cmid: &str, res: Result<u64, Type>) -> u64 {
        let op = self.send_invoke(p, conn, cmid);
        self.send_complete(op, p, conn, cmid, res);
        op
    }
    fn history(&mut self, p: i64, conn: u64, newest_first: Vec<Msg>, has_more: bool) -> u64 {
        let op = self.next();
        let mut e = self.ev(op, p, Type::Invoke, F::History);
        e.conn = Some(conn);
        e.conversation = Some(C.into());
        self.events.push(e.clone());
        let mut done = self.ev(op, p, Type::Ok, F::History);
        done.conn = e.conn;
        done.conversation = e.conversation;
        done.value = Some(Value {
            messages: Some(newest_first),
            has_more: Some(has_more),
            ..Default::default()
        });
        self.events.push(done);
        op
    }
    fn sync(&mut self, p: i64, conn: u64, from: u64, msgs: Vec<Msg>, last_seq: u64) -> u64 {
        let op = self.next();
        let mut e = self.ev(op, p, Type::Invoke, F::Sync);
        e.conn = Some(conn);
        e.value = Some(Value {
            entries: Some(vec![SyncEntry {
                conversation: C.into(),
                from_seq: from,
                ..Default::default()
            }]),
            ..Default::default()
        });
        self.events.push(e);
        let mut done = self.ev(op, p, Type::Ok, F::Sync);
        done.conn = Some(conn);
        done.value = Some(Value {
            entries: Some(vec![SyncEntry {
                conversation: C.into(),
                from_seq: from,
                last_seq: Some(last_seq),
                has_more: Some(false),
                messages: Some(msgs),
                error: None,
            }]),
            ..Default::default()
        });
        self.events.push(done);
        op
    }
    fn push(&mut self, p: i64, conn: u64, msgs: Vec<Msg>) -> u64 {
        let op = self.next();
        let mut e = self.ev(op, p, Type::Ok, F::Push);
        e.conn = Some(conn);
        e.conversation = Some(C.into());
        e.value = Some(Value {
            messages: Some(msgs),
            ..Default::default()
        });
        self.events.push(e);
        op
    }
    fn final_read(&mut self, node: &str, msgs: Vec<Msg>) -> u64 {
        let op = self.next();
        let mut e = self.ev(op, HARNESS, Type::Invoke, F::FinalRead);
        e.node = Some(node.into());
        e.conversation = Some(C.into());
        self.events.push(e.clone());
        let mut done = self.ev(op, HARNESS, Type::Ok, F::FinalRead);
        done.node = e.node;
        done.conversation = e.conversation;
        done.value = Some(Value {
            last_seq: msgs.iter().map(|m| m.seq).max(),
            messages: Some(msgs),
            ..Default::default()
        });
        self.events.push(done);
        op
    }
    fn checksum(&mut self, raw: serde_json::Value) -> u64 {
        let op = self.next();
        let mut e = self.ev(op, HARNESS, Type::Ok, F::Checksum);
        e.value = Some(Value {
            raw: Some(raw),
            ..Default::default()
        });
        self.events.push(e);
        op
    }
    fn nemesis(&mut self, action: &str, fault: &str) {
        let op = self.next();
        for ty in [Type::Invoke, Type::Info] {
            let mut e = self.ev(op, NEMESIS, ty, F::Nemesis);
            e.value = Some(Value {
                action: Some(action.into()),
                fault: Some(fault.into()),
                ..Default::default()
            });
            self.events.push(e);
        }
    }
    fn check(&self) -> Report {
        // Round-trip through JSON lines, as `check HISTORY.jsonl` reads them.
        let text: String = self
            .events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        let parsed: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        check(&parsed)
    }
}

/// Three messages from two processes: pushes, reads, final reads on two nodes, checksums.
fn clean() -> H {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.push(1, 11, vec![m(1, "p0-1")]);
    h.send(1, 11, "p1-1", Ok(2));
    h.push(0, 10, vec![m(2, "p1-1")]);
    h.send(0, 10, "p0-2", Ok(3));
    h.push(1, 11, vec![m(3, "p0-2")]);
    h.history(1, 11, vec![m(3, "p0-2"), m(2, "p1-1"), m(1, "p0-1")], false);
    h.sync(0, 10, 1, vec![m(2, "p1-1"), m(3, "p0-2")], 3);
    let all = vec![m(1, "p0-1"), m(2, "p1-1"), m(3, "p0-2")];
    h.final_read("n1", all.clone());
    h.final_read("n2", all);
    h.checksum(serde_json::json!({
        "n1": {"groups":[{"group":1,"applied_index":9,"checksum":"abc"}]},
        "n2": {"groups":[{"group":1,"applied_index":9,"checksum":"abc"}]},
    }));
    h
}

fn assert_found(r: &Report, class: &str) {
    assert!(
        r.counts.get(class).copied().unwrap_or(0) > 0,
        "expected a {class} anomaly, got {:#?}",
        r.anomalies
    );
    let list = &r.anomalies[class];
    assert!(
        list.iter().all(|a| !a.op_ids.is_empty()),
        "every anomaly names op ids"
    );
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn clean_history_passes() {
    let r = clean().check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert_eq!(r.anomaly_total(), 0);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.stats.sends_acked, 3);
    assert_eq!(r.recovered_count, 0);
}

#[test]
fn clean_history_with_retries_and_faults_passes() {
    let mut h = H::default();
    h.nemesis("start", "kill");
    h.send(0, 10, "p0-1", Err(Type::Info));
    h.send(0, 12, "p0-1", Ok(1)); // the retry returns the original seq
    h.send(1, 11, "p1-1", Err(Type::Fail)); // never stored
    h.nemesis("stop", "kill");
    h.send(1, 11, "p1-2", Ok(2));
    let all = vec![m(1, "p0-1"), m(2, "p1-2")];
    h.final_read("n1", all);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert_eq!(r.stats.sends_unacked_absent, 1);
    assert_eq!(r.windows.len(), 1);
    let w = &r.windows[0];
    assert_eq!((w.sends, w.ok, w.fail, w.info), (3, 1, 1, 1));
    assert!(w.heal_to_first_ok_ms.contains_key(C));
}

#[test]
fn lost_ack() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let ack = h.send(0, 10, "p0-2", Ok(2));
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2")]);
    let fr = h.final_read("n2", vec![m(1, "p0-1")]);
    let r = h.check();
    assert_found(&r, "lost");
    let a = &r.anomalies["lost"][0];
    assert_eq!(a.op_ids, vec![ack, fr]);
}

#[test]
fn duplicated_client_msg_id_at_two_seqs() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-1")]);
    assert_found(&h.check(), "duplicated");
}

#[test]
fn duplicated_retry_acked_with_another_seq() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 11, "p0-1", Ok(2));
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-1")]);
    let r = h.check();
    assert_found(&r, "duplicated");
    assert!(r.anomalies["duplicated"]
        .iter()
        .any(|a| a.message.contains("acks of p0-1")));
}

#[test]
fn gap_in_final_read() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 10, "p0-2", Ok(3));
    h.final_read("n1", vec![m(1, "p0-1"), m(3, "p0-2")]);
    let r = h.check();
    assert_found(&r, "gap");
    assert_eq!(r.anomalies["gap"][0].seq, Some(2));
}

#[test]
fn gap_in_history_page() {
    let mut h = clean();
    h.history(1, 11, vec![m(3, "p0-2"), m(1, "p0-1")], false);
    assert_found(&h.check(), "gap");
}

#[test]
fn reuse_two_messages_at_one_seq() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(1, 11, "p1-1", Ok(1));
    h.final_read("n1", vec![m(1, "p1-1")]);
    assert_found(&h.check(), "reuse");
}

#[test]
fn order_pushes_go_backwards() {
    let mut h = clean();
    h.push(1, 11, vec![m(2, "p1-1")]); // seq 2 after 3 on connection 11
    assert_found(&h.check(), "order");
}

#[test]
fn order_duplicate_push() {
    let mut h = clean();
    h.push(0, 10, vec![m(2, "p1-1")]); // connection 10 already got seq 2
    assert_found(&h.check(), "order");
}

#[test]
fn order_real_time_violated() {
    let mut h = H::default();
    let a = h.send(0, 10, "p0-1", Ok(2)); // acked first ...
    let b = h.send(1, 11, "p1-1", Ok(1)); // ... but the later send got the lower seq
    h.final_read("n1", vec![m(1, "p1-1"), m(2, "p0-1")]);
    let r = h.check();
    assert_found(&r, "order");
    assert_eq!(r.anomalies["order"][0].op_ids, vec![a, b]);
}

#[test]
fn stale_history_read() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let ack = h.send(0, 10, "p0-2", Ok(2));
    let read = h.history(1, 11, vec![m(1, "p0-1")], false);
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2")]);
    let r = h.check();
    assert_found(&r, "stale-read");
    assert_eq!(r.anomalies["stale-read"][0].op_ids, vec![ack, read]);
}

#[test]
fn stale_sync_last_seq() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 10, "p0-2", Ok(2));
    h.sync(1, 11, 0, vec![m(1, "p0-1")], 1);
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2")]);
    assert_found(&h.check(), "stale-read");
}

#[test]
fn read_started_before_ack_is_not_stale() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let op = h.send_invoke(0, 10, "p0-2");
    // The read starts while p0-2 is in flight and does not see it: allowed.
    h.history(1, 11, vec![m(1, "p0-1")], false);
    h.send_complete(op, 0, 10, "p0-2", Ok(2));
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
}

#[test]
fn stale_final_read_on_one_node() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 10, "p0-2", Err(Type::Info));
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2")]);
    h.final_read("n2", vec![m(1, "p0-1")]);
    assert_found(&h.check(), "stale-read");
}

#[test]
fn diverging_replicas() {
    let mut h = clean();
    h.checksum(serde_json::json!({
        "n1": {"groups":[{"group":1,"applied_index":9,"checksum":"abc"}]},
        "n2": {"groups":[{"group":1,"applied_index":9,"checksum":"abd"}]},
    }));
    assert_found(&h.check(), "diverge");
}

#[test]
fn different_applied_index_is_a_note_not_divergence() {
    let mut h = clean();
    h.checksum(serde_json::json!({
        "n1": {"groups":[{"group":1,"applied_index":9,"checksum":"abc"}]},
        "n2": {"groups":[{"group":1,"applied_index":8,"checksum":"xyz"}]},
    }));
    let r = h.check();
    assert!(r.valid);
    assert!(r
        .notes
        .iter()
        .any(|n| n.contains("different applied indexes")));
}

#[test]
fn connection_skip_unfilled_by_sync() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 10, "p0-2", Ok(2));
    h.send(0, 10, "p0-3", Ok(3));
    h.push(1, 11, vec![m(1, "p0-1"), m(3, "p0-3")]); // skips 2
                                                     // The client asks for everything after 1; the server leaves 2 out again.
    h.sync(1, 11, 1, vec![m(3, "p0-3")], 3);
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2"), m(3, "p0-3")]);
    let r = h.check();
    assert_found(&r, "connection-skip");
    assert_eq!(r.anomalies["connection-skip"][0].seq, Some(2));
}

#[test]
fn connection_skip_filled_by_sync_is_fine() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 10, "p0-2", Ok(2));
    h.send(0, 10, "p0-3", Ok(3));
    h.push(1, 11, vec![m(1, "p0-1"), m(3, "p0-3")]);
    h.sync(1, 11, 1, vec![m(2, "p0-2"), m(3, "p0-3")], 3);
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2"), m(3, "p0-3")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert_eq!(r.stats.push_gaps_filled, 1);
}

#[test]
fn own_sends_are_not_push_gaps() {
    let mut h = H::default();
    h.send(1, 11, "p1-1", Ok(1));
    h.push(0, 10, vec![m(1, "p1-1")]);
    h.send(0, 10, "p0-1", Ok(2)); // not pushed back to connection 10
    h.send(1, 11, "p1-2", Ok(3));
    h.push(0, 10, vec![m(3, "p1-2")]);
    h.final_read("n1", vec![m(1, "p1-1"), m(2, "p0-1"), m(3, "p1-2")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert_eq!(r.stats.push_gaps_unfilled_no_chance, 0);
}

#[test]
fn phantom_message() {
    let mut h = clean();
    h.final_read(
        "n1",
        vec![
            m(1, "p0-1"),
            m(2, "p1-1"),
            m(3, "p0-2"),
            m(4, "nobody-sent-this"),
        ],
    );
    assert_found(&h.check(), "phantom");
}

#[test]
fn recovered_send_is_counted_not_an_anomaly() {
    let mut h = H::default();
    let a = h.send(0, 10, "p0-1", Err(Type::Info));
    let b = h.send(0, 10, "p0-1", Err(Type::Fail));
    h.final_read("n1", vec![m(1, "p0-1")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert_eq!(r.recovered_count, 1);
    assert_eq!(r.recovered[0].op_ids, vec![a, b]);
    assert_eq!(r.recovered[0].last, "fail");
}

#[test]
fn late_ack_counts_as_ack() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Err(Type::Info));
    let op = h.next();
    let mut e = h.ev(op, 0, Type::Ok, F::LateAck);
    e.conn = Some(10);
    e.conversation = Some(C.into());
    e.client_msg_id = Some("p0-1".into());
    e.value = Some(Value {
        seq: Some(1),
        ..Default::default()
    });
    h.events.push(e);
    h.final_read("n1", vec![]);
    let r = h.check();
    assert_found(&r, "lost");
}

#[test]
fn no_final_read_is_a_harness_failure() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let r = h.check();
    assert!(r.harness_error.is_some());
    assert_eq!(r.exit_code(), 2);
}

#[test]
fn unrecovered_node_cannot_serve_final_read() {
    let mut h = clean();
    let op = h.next();
    let mut e = h.ev(op, HARNESS, Type::Invoke, F::FinalRead);
    e.node = Some("n3".into());
    e.conversation = Some(C.into());
    h.events.push(e.clone());
    let mut done = h.ev(op, HARNESS, Type::Fail, F::FinalRead);
    done.node = e.node;
    done.conversation = e.conversation;
    done.error = Some("unavailable".into());
    h.events.push(done);
    let r = h.check();
    assert_found(&r, "unrecovered");
    assert_eq!(r.anomalies["unrecovered"][0].op_ids, vec![op]);
}

#[test]
fn final_read_that_failed_then_succeeded_is_fine() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let op = h.next();
    let mut e = h.ev(op, HARNESS, Type::Invoke, F::FinalRead);
    e.node = Some("n1".into());
    e.conversation = Some(C.into());
    h.events.push(e.clone());
    let mut done = h.ev(op, HARNESS, Type::Info, F::FinalRead);
    done.node = e.node;
    done.conversation = e.conversation;
    h.events.push(done);
    h.final_read("n1", vec![m(1, "p0-1")]);
    assert!(h.check().valid);
}

#[test]
fn unrecovered_node_not_ready_after_heal() {
    let mut h = clean();
    let op = h.next();
    let mut e = h.ev(op, HARNESS, Type::Ok, F::Ready);
    e.value = Some(Value {
        raw: Some(serde_json::json!({"n1": true, "n2": false})),
        ..Default::default()
    });
    h.events.push(e);
    let r = h.check();
    assert_found(&r, "unrecovered");
    assert!(r.anomalies["unrecovered"][0].message.contains("n2"));
}

#[test]
fn uncommitted_message_pushed_but_never_stored() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    // Sent, never acknowledged, pushed to another connection, and in no final read (G4).
    h.send(0, 10, "p0-2", Err(Type::Info));
    h.push(1, 11, vec![m(1, "p0-1")]);
    let pushed = h.push(1, 11, vec![m(2, "p0-2")]);
    h.final_read("n1", vec![m(1, "p0-1")]);
    let r = h.check();
    assert_found(&r, "uncommitted");
    assert_eq!(r.anomalies["uncommitted"][0].op_ids, vec![pushed]);
}

#[test]
fn recovery_is_timed_per_shard_group_when_known() {
    let mut h = H::default();
    let op = h.next();
    let mut e = h.ev(op, HARNESS, Type::Ok, F::Shards);
    e.value = Some(Value {
        raw: Some(serde_json::json!({ C: 7 })),
        ..Default::default()
    });
    h.events.push(e);
    h.nemesis("start", "kill");
    h.send(0, 10, "p0-1", Err(Type::Info));
    h.nemesis("stop", "kill");
    h.send(0, 10, "p0-2", Ok(1));
    h.final_read("n1", vec![m(1, "p0-2")]);
    let r = h.check();
    let w = &r.windows[0];
    assert_eq!(
        w.heal_to_first_ok_ms.keys().collect::<Vec<_>>(),
        vec!["group 7"]
    );
}

#[test]
fn order_within_a_history_page() {
    let mut h = clean();
    // A history page is newest first: listing seq 2 after seq 1 is out of order.
    let page = h.history(1, 11, vec![m(1, "p0-1"), m(2, "p1-1"), m(3, "p0-2")], false);
    let r = h.check();
    assert_found(&r, "order");
    assert_eq!(r.anomalies["order"][0].op_ids, vec![page]);
    assert!(r.anomalies["order"][0].message.contains("descending"));
}

#[test]
fn gap_history_page_without_more_must_reach_seq_one() {
    let mut h = clean();
    // No more pages, yet the oldest message listed is seq 2.
    let page = h.history(1, 11, vec![m(3, "p0-2"), m(2, "p1-1")], false);
    let r = h.check();
    assert_found(&r, "gap");
    let a = &r.anomalies["gap"][0];
    assert_eq!((a.seq, a.op_ids.clone()), (Some(1), vec![page]));
}

#[test]
fn history_page_with_more_need_not_reach_seq_one() {
    let mut h = clean();
    h.history(1, 11, vec![m(3, "p0-2"), m(2, "p1-1")], true);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
}

#[test]
fn older_history_page_is_not_stale() {
    let mut h = clean();
    // A page asked with before_seq=2 is an older page: it need not show seq 3.
    let op = h.next();
    let mut e = h.ev(op, 1, Type::Invoke, F::History);
    e.conn = Some(11);
    e.conversation = Some(C.into());
    e.value = Some(Value {
        before_seq: Some(2),
        ..Default::default()
    });
    h.events.push(e.clone());
    let mut done = h.ev(op, 1, Type::Ok, F::History);
    done.conn = e.conn;
    done.conversation = e.conversation;
    done.value = Some(Value {
        messages: Some(vec![m(1, "p0-1")]),
        has_more: Some(false),
        ..Default::default()
    });
    h.events.push(done);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
}

#[test]
fn stale_sync_that_claims_no_more_below_an_ack() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let ack = h.send(0, 10, "p0-2", Ok(2));
    // last_seq says 2, but the entry (has_more=false) stops at seq 1.
    let sync = h.sync(1, 11, 0, vec![m(1, "p0-1")], 2);
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2")]);
    let r = h.check();
    assert_found(&r, "stale-read");
    assert_eq!(r.anomalies["stale-read"][0].op_ids, vec![ack, sync]);
}

#[test]
fn sync_entry_with_an_error_is_not_stale() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    let op = h.next();
    let mut e = h.ev(op, 1, Type::Invoke, F::Sync);
    e.conn = Some(11);
    h.events.push(e);
    let mut done = h.ev(op, 1, Type::Ok, F::Sync);
    done.conn = Some(11);
    done.value = Some(Value {
        entries: Some(vec![SyncEntry {
            conversation: C.into(),
            from_seq: 0,
            error: Some("unavailable".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    h.events.push(done);
    h.final_read("n1", vec![m(1, "p0-1")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
}

#[test]
fn push_gap_without_a_later_sync_is_counted_not_an_anomaly() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.send(0, 10, "p0-2", Ok(2));
    h.send(0, 10, "p0-3", Ok(3));
    h.push(1, 11, vec![m(1, "p0-1"), m(3, "p0-3")]); // skips 2; connection 11 closes
    h.final_read("n1", vec![m(1, "p0-1"), m(2, "p0-2"), m(3, "p0-3")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert_eq!(r.stats.push_gaps_unfilled_no_chance, 1);
    assert_eq!(r.stats.push_messages, 2);
}

#[test]
fn membership_events_are_not_phantom() {
    let mut h = clean();
    // Membership events carry client_msg_id = msg_id, and the workload sent none.
    let event = Msg {
        seq: 4,
        msg_id: Some("ev-1".into()),
        client_msg_id: "ev-1".into(),
        sender: None,
    };
    let all = vec![m(1, "p0-1"), m(2, "p1-1"), m(3, "p0-2"), event];
    h.final_read("n1", all.clone());
    h.final_read("n2", all);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
}

#[test]
fn missing_or_unanswered_checksums_are_notes() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Ok(1));
    h.final_read("n1", vec![m(1, "p0-1")]);
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert!(r
        .notes
        .iter()
        .any(|n| n == "replica checksums: not recorded"));

    h.checksum(serde_json::json!({"n1": null, "n2": null}));
    let r = h.check();
    assert!(r.valid, "{:#?}", r.anomalies);
    assert!(r
        .notes
        .iter()
        .any(|n| n.starts_with("replica checksums: skipped")));
}

#[test]
fn recovered_send_names_its_last_attempt() {
    let mut h = H::default();
    h.send(0, 10, "p0-1", Err(Type::Fail));
    h.send(0, 10, "p0-1", Err(Type::Info));
    h.final_read("n1", vec![m(1, "p0-1")]);
    let r = h.check();
    assert_eq!(r.recovered_count, 1);
    assert_eq!(r.recovered[0].last, "info");
    assert_eq!(r.recovered[0].seq, 1);
}
