//! The bincode 2 (serde, standard config) codec: the format of every stored value, of Raft
//! log entries and of the RPCs a node serializes inside transport frames (bottom layer: imports
//! nothing of the crate). The transport frames themselves use their own size-limited config.
//!
//! Stored data depends on it byte for byte: the encoding of an enum is its variant index,
//! so variants are only ever appended, never reordered.

/// A value could not be encoded, or bytes are not a value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("encode: {0}")]
    Encode(String),
    #[error("corrupt value: {0}")]
    Decode(String),
}

/// Encodes a value with bincode 2 (serde, standard config).
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value written by [`encode`]; trailing bytes are an error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, n) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if n != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - n
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
