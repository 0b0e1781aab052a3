//! The delivery rules of one gateway (`Tracker`): order, duplicates, gaps, and G5 on gap
//! fill and refill.

use super::*;

const GROUP: GroupId = 3;
const CONV: &str = "conv";

fn msg(seq: u64, kind: MsgKind) -> Message {
    Message {
        conversation_id: CONV.into(),
        seq,
        msg_id: format!("m{seq}"),
        sender_id: "alice".into(),
        sender_device: "d".into(),
        client_msg_id: format!("c{seq}"),
        kind,
        body: if kind == MsgKind::Text {
            format!("text {seq}")
        } else {
            String::new()
        },
        ts: seq,
        ref_seq: None,
    }
}

fn push(seq: u64, kind: MsgKind, recipients: &[&str]) -> Pushed {
    Pushed {
        message: msg(seq, kind),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
    }
}

/// `(seq, recipients)` of what was delivered.
fn delivered(out: &[Pushed]) -> Vec<(u64, Vec<String>)> {
    out.iter()
        .map(|p| (p.message.seq, p.recipients.clone()))
        .collect()
}

fn who(users: &[&str]) -> Vec<String> {
    users.iter().map(|s| s.to_string()).collect()
}

/// Alice removes X at seq 2, then the leader changes: the refill reads seq 3.. from the new
/// leader. Seq 3 must not go to X (it went to the recipients of the last push, the removal,
/// which X was one of).
#[test]
fn refill_after_a_removal_never_reaches_the_removed_member() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.accept(GROUP, push(1, MsgKind::Text, &["alice", "x"]), &mut out);
    t.accept(
        GROUP,
        push(2, MsgKind::MemberRemoved, &["alice", "x"]),
        &mut out,
    );
    assert_eq!(
        delivered(&out),
        vec![(1, who(&["alice", "x"])), (2, who(&["alice", "x"]))]
    );
    out.clear();
    let fills = t.start_refill(GROUP);
    assert_eq!(fills, vec![(CONV.to_string(), 2, None)]);
    t.finish_fill(
        CONV,
        vec![msg(3, MsgKind::Text), msg(4, MsgKind::Text)],
        &mut out,
    );
    for (seq, r) in delivered(&out) {
        assert!(
            !r.contains(&"x".to_string()),
            "seq {seq} after x's removal at 2 went to {r:?}"
        );
    }
    // The next push carries its own recipients: it says who gets 3 and 4 (a gap fill).
    out.clear();
    let fill = t.accept(GROUP, push(5, MsgKind::Text, &["alice"]), &mut out);
    assert_eq!(fill, Some((CONV.to_string(), 2, Some(4))));
    t.finish_fill(
        CONV,
        vec![msg(3, MsgKind::Text), msg(4, MsgKind::Text)],
        &mut out,
    );
    assert_eq!(
        delivered(&out),
        vec![
            (3, who(&["alice"])),
            (4, who(&["alice"])),
            (5, who(&["alice"])),
        ]
    );
}

/// A gap right after a removal: the held push after the gap says who the members are, so
/// the fetched messages go to them (not to X).
#[test]
fn gap_fill_after_a_removal_uses_the_members_of_each_seq() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.accept(GROUP, push(1, MsgKind::Text, &["alice", "x"]), &mut out);
    t.accept(
        GROUP,
        push(2, MsgKind::MemberRemoved, &["alice", "x"]),
        &mut out,
    );
    out.clear();
    let fill = t.accept(GROUP, push(5, MsgKind::Text, &["alice", "bob"]), &mut out);
    assert_eq!(fill, Some((CONV.to_string(), 2, Some(4))));
    assert!(out.is_empty(), "seq 5 is held until the gap is filled");
    t.finish_fill(
        CONV,
        vec![msg(3, MsgKind::MemberAdded), msg(4, MsgKind::Text)],
        &mut out,
    );
    // 3 (bob added) goes to the members after it, known from 4 and 5; 4 likewise; 5 as
    // pushed. X gets none of them.
    assert_eq!(
        delivered(&out),
        vec![
            (3, who(&["alice", "bob"])),
            (4, who(&["alice", "bob"])),
            (5, who(&["alice", "bob"])),
        ]
    );
}

/// A removal inside the gap: the messages before it go to the old members (X included, it
/// was a member then), the removal to everyone who was a member, and what follows only to
/// the members after it.
#[test]
fn removal_inside_a_gap_splits_the_recipients() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.accept(GROUP, push(1, MsgKind::Text, &["alice", "x"]), &mut out);
    out.clear();
    t.accept(GROUP, push(5, MsgKind::Text, &["alice"]), &mut out);
    t.finish_fill(
        CONV,
        vec![
            msg(2, MsgKind::Text),
            msg(3, MsgKind::MemberRemoved),
            msg(4, MsgKind::Text),
        ],
        &mut out,
    );
    assert_eq!(
        delivered(&out),
        vec![
            (2, who(&["alice", "x"])),
            (3, who(&["alice", "x"])),
            (4, who(&["alice"])),
            (5, who(&["alice"])),
        ]
    );
}

/// With nothing after a removal to say who the members are, a refill delivers nothing past
/// it (the clients sync the gap), rather than guessing.
#[test]
fn unknown_members_stop_delivery_instead_of_guessing() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.accept(
        GROUP,
        push(1, MsgKind::MemberRemoved, &["alice", "x"]),
        &mut out,
    );
    out.clear();
    t.start_refill(GROUP);
    t.finish_fill(CONV, vec![msg(2, MsgKind::Text)], &mut out);
    assert!(out.is_empty(), "delivered {:?}", delivered(&out));
    // Not stuck: the next push opens a gap fill, and its recipients say who gets seq 2.
    let fill = t.accept(GROUP, push(3, MsgKind::Text, &["alice"]), &mut out);
    assert_eq!(fill, Some((CONV.to_string(), 1, Some(2))));
    t.finish_fill(CONV, vec![msg(2, MsgKind::Text)], &mut out);
    assert_eq!(
        delivered(&out),
        vec![(2, who(&["alice"])), (3, who(&["alice"]))]
    );
}

/// Pushes that arrive out of order (a later one, held during a fill) never set who gets an
/// earlier seq; duplicates are dropped.
#[test]
fn duplicates_are_dropped_and_order_holds() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.accept(GROUP, push(1, MsgKind::Text, &["a"]), &mut out);
    t.accept(GROUP, push(1, MsgKind::Text, &["a"]), &mut out);
    t.accept(GROUP, push(2, MsgKind::Text, &["a"]), &mut out);
    assert_eq!(delivered(&out), vec![(1, who(&["a"])), (2, who(&["a"]))]);
}
