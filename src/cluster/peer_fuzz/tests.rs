//! Fuzz targets of the peer frame decoder (issue 12, point 9): what a node reads from a
//! peer's stream — a `u32` length prefix, then a bincode `WireRequest<PeerRequest>` or
//! `WireReply<PeerReply>` — decoded from arbitrary and from mutated valid bytes. The decoder
//! never panics, refuses a length over the frame limit before it allocates, and a length
//! inside the payload cannot claim more than the payload holds. Bounded: a few hundred cases
//! of at most a few KiB each, run by `cargo test`.

use proptest::prelude::*;

use super::forward::ForwardedWrite;
use super::peer::{PeerReply, PeerRequest};
use super::push::PushItem;
use crate::shard::command::*;
use crate::transport::frame::{self, FrameHeader, WireReply, WireRequest};
use crate::transport::{TransportError, FRAME_BYTES_MAX};

type Req = WireRequest<PeerRequest>;
type Rep = WireReply<PeerReply>;

fn header() -> FrameHeader {
    FrameHeader {
        cluster_id: "c".into(),
        group: 1,
        from: 2,
        to: 3,
        trace_id: "t".into(),
    }
}

fn message(seq: u64) -> Message {
    Message {
        conversation_id: "conv".into(),
        seq,
        msg_id: "01J".into(),
        sender_id: "u0".into(),
        sender_device: "d".into(),
        client_msg_id: "m".into(),
        kind: MsgKind::Text,
        body: "hello".into(),
        ts: 1,
        ref_seq: None,
    }
}

/// Valid frames of the kinds peers exchange most, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let send = ShardOp::Send {
        conversation_id: "conv".into(),
        sender: "u0".into(),
        sender_device: "d".into(),
        client_msg_id: "m".into(),
        kind: MsgKind::Text,
        body: "hi".into(),
        ref_seq: None,
        msg_id: "01J".into(),
        ts: 7,
    };
    let requests = vec![
        PeerRequest::Write(send.clone()),
        PeerRequest::WriteBatch(vec![ForwardedWrite {
            group: 1,
            trace_id: "t".into(),
            op: send,
        }]),
        PeerRequest::Push(vec![
            PushItem::Message(Pushed {
                message: message(1),
                recipients: vec!["u0".into(), "u1".into()],
            }),
            PushItem::LeaderChanged { group: 2 },
            PushItem::Refill { group: 3 },
        ]),
        PeerRequest::Status,
        PeerRequest::HoldElections { hold_ms: 5 },
    ];
    let mut out: Vec<Vec<u8>> = requests
        .into_iter()
        .map(|body| {
            frame::encode(&Req::Call {
                header: header(),
                body,
            })
            .expect("encode")
        })
        .collect();
    out.push(frame::encode(&Rep::Reply(PeerReply::Pushed)).expect("encode"));
    out.push(
        frame::encode(&Rep::Reply(PeerReply::Write(Ok(ShardResponse::Done)))).expect("encode"),
    );
    // Payloads only (without the 4-byte prefix).
    out.into_iter().map(|f| f[4..].to_vec()).collect()
}

/// Decodes `payload` both as a request and as a reply; neither may panic.
fn decode_both(payload: &[u8]) {
    if let Ok(r) = frame::decode::<Req>(payload) {
        // What decodes re-encodes (no half-built value).
        let _ = frame::encode(&r);
    }
    let _ = frame::decode::<Rep>(payload);
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn arbitrary_payloads_never_panic() {
    proptest!(config(512), |(payload in prop::collection::vec(any::<u8>(), 0..2048))| {
        decode_both(&payload);
    });
}

#[test]
fn mutated_valid_frames_never_panic() {
    let seeds = seeds();
    let n = seeds.len();
    proptest!(config(512), |(
        which in 0..n,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    )| {
        let mut p = seeds[which].clone();
        for (at, byte) in flips {
            let i = at.index(p.len());
            p[i] = byte;
        }
        if truncate {
            p.truncate(cut.index(p.len() + 1));
        }
        decode_both(&p);
    });
}

/// A length or count inside the payload that claims far more than the payload holds (up to
/// `u64::MAX`) is an error, decoded without allocating what it claims.
#[test]
fn huge_inner_lengths_are_refused() {
    proptest!(config(256), |(claim in prop_oneof![
        Just(u64::MAX),
        Just(u32::MAX as u64),
        Just(FRAME_BYTES_MAX as u64 + 1),
        (1u64 << 20)..(1u64 << 40),
    ])| {
        // `Call { header: { cluster_id: <claim> bytes ... } }`: variant 1, then a string
        // length; and `Reply(Push(...))`-like: variant, then a Vec length.
        let mut len = Vec::new();
        // bincode varint: 0xFD = u32 follows, 0xFE = u64 follows (little endian).
        len.push(0xFE);
        len.extend_from_slice(&claim.to_le_bytes());
        let mut as_string = vec![1u8];
        as_string.extend_from_slice(&len);
        as_string.extend_from_slice(b"abc");
        prop_assert!(frame::decode::<Req>(&as_string).is_err());
        // Call { header (valid), body: Push(<claim> items) }
        let valid = frame::encode(&Req::Call { header: header(), body: PeerRequest::Push(vec![]) })
            .expect("encode");
        let mut as_vec = valid[4..valid.len() - 1].to_vec();
        as_vec.extend_from_slice(&len);
        as_vec.extend_from_slice(&[0u8; 16]);
        prop_assert!(frame::decode::<Req>(&as_vec).is_err());
    });
}

/// The length prefix is checked before anything is read or allocated: a prefix over the
/// limit fails at once on a stream that holds nothing more.
#[test]
fn length_prefix_over_the_limit_is_refused_before_reading() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    proptest!(config(256), |(len in any::<u32>(), rest in prop::collection::vec(any::<u8>(), 0..64))| {
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend_from_slice(&rest);
        let max = 1024usize;
        let got: Result<Req, TransportError> =
            rt.block_on(frame::read_frame(&mut stream.as_slice(), max));
        if len as usize > max {
            prop_assert!(
                matches!(&got, Err(TransportError::Protocol(m)) if m.contains("exceeds")),
                "{got:?}"
            );
        } else if rest.len() < len as usize {
            prop_assert!(got.is_err(), "a short stream decoded: {got:?}");
        }
    });
}

/// An oversized frame is refused when it is sent, typed, so that Raft can shrink its batch.
#[test]
fn oversized_frames_are_refused_typed() {
    let body = PeerRequest::Push(vec![PushItem::Message(Pushed {
        message: Message {
            body: "x".repeat(FRAME_BYTES_MAX),
            ..message(1)
        },
        recipients: vec![],
    })]);
    match frame::encode(&Req::Call {
        header: header(),
        body,
    }) {
        Err(TransportError::FrameTooLarge { bytes, max }) => {
            assert!(bytes > max);
            assert_eq!(max, FRAME_BYTES_MAX);
        }
        other => panic!("not refused: {:?}", other.map(|f| f.len())),
    }
}
