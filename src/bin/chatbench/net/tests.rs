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

#[test]
fn parses_plain_and_chunked_responses() {
    let r = parse_http_response(b"HTTP/1.1 201 Created\r\nA: b\r\n\r\n{\"x\":1}").unwrap();
    assert_eq!((r.status, r.body.as_str()), (201, "{\"x\":1}"));
    let raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    assert_eq!(parse_http_response(raw).unwrap().body, "abcde");
}
