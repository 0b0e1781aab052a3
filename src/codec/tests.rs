use super::*;

#[test]
fn a_value_decodes_to_itself() {
    let v = (7u64, "héllo".to_string(), Some(vec![1u32, 300]));
    let bytes = encode(&v).expect("encode");
    let back: (u64, String, Option<Vec<u32>>) = decode(&bytes).expect("decode");
    assert_eq!(back, v);
}

#[test]
fn trailing_bytes_are_corrupt() {
    let mut bytes = encode(&5u64).expect("encode");
    bytes.push(0);
    assert_eq!(
        decode::<u64>(&bytes),
        Err(CodecError::Decode("1 trailing bytes".into()))
    );
}

#[test]
fn truncated_bytes_are_corrupt() {
    let bytes = encode(&"a string".to_string()).expect("encode");
    assert!(matches!(
        decode::<String>(&bytes[..bytes.len() - 1]),
        Err(CodecError::Decode(_))
    ));
}

/// The encoding is bincode 2's standard config (varint integers), which every stored value
/// uses: changing it would make existing data dirs unreadable.
#[test]
fn integers_are_varints() {
    assert_eq!(encode(&5u64).expect("encode"), vec![5]);
    assert_eq!(encode(&300u64).expect("encode"), vec![0xfb, 0x2c, 0x01]);
}
