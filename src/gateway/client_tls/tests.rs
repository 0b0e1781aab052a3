use super::*;

fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.cert.pem()).expect("write");
    std::fs::write(&key, c.signing_key.serialize_pem()).expect("write");
    (cert, key)
}

#[test]
fn reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "one.test");
    let holder = ReloadableCert::load(&cert, &key).expect("loads");
    let first = holder.current().cert[0].clone();

    // A new certificate in the same files: new handshakes get it.
    let (c2, k2) = self_signed(dir.path(), "two.test");
    std::fs::copy(&c2, &cert).expect("copy");
    std::fs::copy(&k2, &key).expect("copy");
    holder.reload().expect("reloads");
    let second = holder.current().cert[0].clone();
    assert_ne!(first, second);

    // A key that does not belong to the certificate: refused, the old pair stays.
    let (_, k3) = self_signed(dir.path(), "three.test");
    std::fs::copy(&k3, &key).expect("copy");
    assert!(matches!(holder.reload(), Err(ClientTlsError::Key(_))));
    assert_eq!(holder.current().cert[0], second);

    // Garbage: refused, the old pair stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    assert!(holder.reload().is_err());
    assert_eq!(holder.current().cert[0], second);
}
