use super::*;

fn tuple(g: u32, conv: &str, seq: u64) -> Vec<u8> {
    let mut b = Vec::new();
    push_u32(&mut b, g);
    push_str(&mut b, conv);
    push_u64(&mut b, seq);
    b
}

#[test]
fn integers_preserve_order() {
    let vals = [
        0u64,
        1,
        2,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as u64,
        u64::MAX - 1,
        u64::MAX,
    ];
    for a in vals {
        for b in vals {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            push_u64(&mut ka, a);
            push_u64(&mut kb, b);
            assert_eq!(a.cmp(&b), ka.cmp(&kb), "{a} vs {b}");
        }
    }
    let vals32 = [0u32, 1, 255, 256, u32::MAX];
    for a in vals32 {
        for b in vals32 {
            assert_eq!(a.cmp(&b), group_prefix(a).cmp(&group_prefix(b)));
            assert_eq!(a.cmp(&b), log_key(a, 7).cmp(&log_key(b, 7)));
        }
    }
}

#[test]
fn tuples_preserve_order() {
    // (group, conversation, seq): order by group, then (len, bytes) of the id, then seq.
    let mut keys = Vec::new();
    for g in [1u32, 2, 300] {
        for c in ["a", "b", "ab", "zz", "aaa"] {
            for s in [1u64, 2, 10, 256, 1 << 40] {
                keys.push(((g, c.len(), c.to_string(), s), tuple(g, c, s)));
            }
        }
    }
    let mut by_tuple = keys.clone();
    by_tuple.sort_by(|a, b| a.0.cmp(&b.0));
    let mut by_bytes = keys;
    by_bytes.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(by_tuple, by_bytes);
}

#[test]
fn strings_are_prefix_free() {
    // All keys of conversation "a" lie strictly before or after all keys of "ab".
    let a_lo = tuple(1, "a", 0);
    let a_hi = tuple(1, "a", u64::MAX);
    let ab_lo = tuple(1, "ab", 0);
    let ab_hi = tuple(1, "ab", u64::MAX);
    assert!(a_hi < ab_lo || ab_hi < a_lo);
    let mut prefix = Vec::new();
    push_u32(&mut prefix, 1);
    push_str(&mut prefix, "a");
    assert!(a_lo.starts_with(&prefix) && !ab_lo.starts_with(&prefix));
}

#[test]
fn reader_roundtrip() {
    let mut b = Vec::new();
    push_u8(&mut b, 9);
    push_u32(&mut b, 77);
    push_str(&mut b, "héllo");
    push_u64(&mut b, 1 << 50);
    b.extend_from_slice(b"tail");
    let mut r = KeyReader::new(&b);
    assert_eq!(r.u8().unwrap(), 9);
    assert_eq!(r.u32().unwrap(), 77);
    assert_eq!(r.str().unwrap(), "héllo");
    assert_eq!(r.u64().unwrap(), 1 << 50);
    assert_eq!(r.rest(), b"tail");
    assert!(r.u64().is_err());
    assert_eq!(parse_log_key(&log_key(3, 42)).unwrap(), (3, 42));
}

#[test]
fn too_long_string_is_an_error() {
    let s = "x".repeat(MAX_KEY_STR + 1);
    assert!(try_push_str(&mut Vec::new(), &s).is_err());
    assert!(try_push_str(&mut Vec::new(), &s[1..]).is_ok());
}

#[test]
fn successor() {
    assert_eq!(prefix_successor(&[0, 1]), Some(vec![0, 2]));
    assert_eq!(prefix_successor(&[0, 0xff]), Some(vec![1]));
    assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    assert_eq!(group_range(u32::MAX).1, None);
    assert_eq!(group_range(1).1, Some(group_prefix(2).to_vec()));
}
