use super::*;

#[test]
fn issued_tokens_verify_and_foreign_ones_do_not() {
    let a = TokenAuthority::new(b"secret-a", 60, &ExternalAuth::default()).unwrap();
    let b = TokenAuthority::new(b"secret-b", 60, &ExternalAuth::default()).unwrap();
    let now = 1_700_000_000_000;
    let (t, exp) = a.issue("u1", crate::gateway::now_ms()).unwrap();
    assert!(exp > now);
    assert_eq!(a.verify(&t).unwrap(), ("u1".to_string(), false));
    assert!(b.verify(&t).is_err());
    let (old, _) = a.issue("u1", 1_000).unwrap();
    assert!(a.verify(&old).is_err(), "expired token accepted");
}

#[test]
fn external_hmac_tokens_are_accepted() {
    let ext = ExternalAuth {
        hmac_secret: Some("ext".into()),
        ..Default::default()
    };
    let ours = TokenAuthority::new(b"ours", 60, &ext).unwrap();
    let theirs = TokenAuthority::new(b"ext", 60, &ExternalAuth::default()).unwrap();
    let (t, _) = theirs.issue("alice", crate::gateway::now_ms()).unwrap();
    assert_eq!(ours.verify(&t).unwrap(), ("alice".to_string(), true));
}

#[test]
fn a_configured_external_issuer_is_required() {
    let ext = ExternalAuth {
        hmac_secret: Some("ext".into()),
        issuer: Some("login.example".into()),
        ..Default::default()
    };
    let ours = TokenAuthority::new(b"ours", 60, &ext).unwrap();
    let sign = |iss: Option<&str>| {
        let claims = Claims {
            sub: "alice".into(),
            exp: crate::gateway::now_ms() / 1000 + 60,
            iat: 0,
            iss: iss.map(str::to_string),
            sid: None,
            ep: None,
            gen: None,
        };
        let key = EncodingKey::from_secret(b"ext");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    };
    assert!(ours.verify(&sign(Some("login.example"))).is_ok());
    assert!(ours.verify(&sign(Some("elsewhere"))).is_err());
    assert!(
        ours.verify(&sign(None)).is_err(),
        "token without iss accepted"
    );
}

#[test]
fn access_and_refresh_tokens_are_not_interchangeable() {
    let a = TokenAuthority::new(b"s", 60, &ExternalAuth::default()).unwrap();
    let now = crate::gateway::now_ms();
    let (access, exp) = a.issue_access("u1", "S1", 3, now).unwrap();
    let c = a.verify_access(&access).unwrap();
    assert_eq!(c.session_id.as_deref(), Some("S1"));
    assert_eq!((c.epoch, c.expires_at), (3, exp));
    let refresh = a.issue_refresh("u1", "S1", 7, now + 60_000, now).unwrap();
    assert_eq!(a.verify_refresh(&refresh).unwrap().generation, 7);
    assert!(
        a.verify(&refresh).is_err(),
        "refresh token accepted as access"
    );
    assert!(
        a.verify_refresh(&access).is_err(),
        "access token accepted as refresh"
    );
}

#[test]
fn passwords_hash_and_verify() {
    let h = hash_password("correct horse").unwrap();
    assert!(verify_password("correct horse", &h));
    assert!(!verify_password("wrong horse", &h));
    assert!(!verify_password("x", "not a hash"));
}
