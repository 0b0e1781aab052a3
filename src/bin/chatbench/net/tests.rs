use super::*;

#[test]
fn parses_endpoints() {
    let ep = Endpoint::parse("ws://127.0.0.1:7070").unwrap();
    assert_eq!(ep.authority, "127.0.0.1:7070");
    assert_eq!(ep.ws_path, "/v1/ws");
    assert_eq!(Endpoint::parse("ws://h/x").unwrap().authority, "h:80");
    assert_eq!(Endpoint::parse("ws://[::1]").unwrap().authority, "[::1]:80");
    assert_eq!(
        Endpoint::parse("http://h:1/v2/ws").unwrap().ws_path,
        "/v2/ws"
    );
    assert!(Endpoint::parse("wss://h").is_err());
}
